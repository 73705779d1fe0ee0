//! What the benchmarks share: signed webhook requests, a readiness wait, a lean HTTP/1.1 load
//! generator over keep-alive connections, latency percentiles, and the CPU time and peak memory
//! of a process. Each bench uses part of it.
#![allow(dead_code)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ingress_egress::connectors::twilio::ingress::signature::compute_signature;

/// `name` from the environment, or `default` when unset or unreadable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `BENCH_SERVICE_ENV`: extra `NAME=value` pairs, separated by spaces, for the service's process
/// only (the baseline keeps the bench's own environment), to try a setting in a same-run ratio.
pub fn service_env() -> Vec<(String, String)> {
    std::env::var("BENCH_SERVICE_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The broker the benchmarks use: `AMQP_URL`, default the local RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The form parameters of the inbound-SMS webhook number `i` (its MessageSid is unique).
pub fn sms_params(i: usize) -> Vec<(String, String)> {
    vec![
        ("MessageSid".to_owned(), format!("SM{:032x}", i)),
        ("From".to_owned(), "+14155550100".to_owned()),
        ("To".to_owned(), "+15005550006".to_owned()),
        (
            "Body".to_owned(),
            format!("benchmark message {i}: the quick brown fox jumps over the lazy dog"),
        ),
        ("NumMedia".to_owned(), "0".to_owned()),
    ]
}

/// About the size of the envelope the service publishes for [`sms_params`].
pub const ENVELOPE_BYTES: usize = 1800;

/// Raw HTTP requests of signed inbound-SMS webhooks, one per index (its MessageSid), for the
/// service at `address` whose `PUBLIC_BASE_URL` is `public_base_url`.
pub fn signed_sms_requests(
    address: &str,
    token: &str,
    public_base_url: &str,
    indices: std::ops::Range<usize>,
) -> Vec<Vec<u8>> {
    indices
        .map(|i| {
            let params = sms_params(i);
            let signature = compute_signature(
                token,
                &format!("{public_base_url}/webhooks/twilio/sms"),
                &params,
            );
            let body = serde_urlencoded::to_string(&params).unwrap();
            format!(
                "POST /webhooks/twilio/sms HTTP/1.1\r\nHost: {address}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\n\
                 X-Twilio-Signature: {signature}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect()
}

#[path = "../../tests/support/mod.rs"]
mod shared;
#[allow(unused_imports)]
pub use shared::{forget_redis_keys, free_port};

/// Polls `/readyz` every 2 ms until it answers 200 (at most 10 s); the time since `started`.
pub async fn wait_ready_fast(address: &str, started: Instant) -> Duration {
    let ready = format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\n\r\n").into_bytes();
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(mut connection) = tokio::net::TcpStream::connect(address).await {
            if exchange_once(&mut connection, &ready).await == Some(200) {
                return started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the service at {address} was not ready within 10 s");
}

/// The processor and core count of this machine, for the record.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, model)| model.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{model}, {cores} cores, {memory_gb:.0} GB")
}

/// The middle value (the upper one of the two middle values of an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Percentiles {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index].as_secs_f64() * 1000.0
        };
        Self {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>5.1} ms {:>5.1} ms {:>5.1} ms",
            self.p50, self.p99, self.p999
        )
    }
}

/// CPU time and peak memory of a process, from `/proc`.
pub struct ProcessStats {
    pid: u32,
}

impl ProcessStats {
    pub fn of(pid: u32) -> Self {
        Self { pid }
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at field 3.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok());
        // utime and stime are fields 14 and 15, the 12th and 13th after the name.
        let total = ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0);
        total / clock_ticks_per_second()
    }

    /// Peak resident memory (VmHWM) in kB.
    pub fn peak_rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The local RabbitMQ's process (`beam.smp`), when the broker runs on this machine: its CPU per
/// message shows what a consumer costs the broker, which a throughput ratio alone hides.
pub fn local_broker() -> Option<ProcessStats> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim() == "beam.smp")
        })
        .map(ProcessStats::of)
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Waits (at most 10 s) until the service at `address` answers `/readyz` with 200.
pub async fn wait_ready(address: &str) {
    let ready = format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\n\r\n").into_bytes();
    for _ in 0..200 {
        if let Ok(mut connection) = tokio::net::TcpStream::connect(address).await {
            if exchange_once(&mut connection, &ready).await == Some(200) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `requests` over `concurrency` keep-alive connections, one request in flight on each
/// (a lean HTTP/1.1 client, so the load generator takes little of the CPU the service needs).
/// Returns requests per second; every answer must be 200.
pub async fn load(address: &str, requests: Vec<Vec<u8>>, concurrency: usize) -> f64 {
    let total = requests.len();
    let queue = Arc::new(std::sync::Mutex::new(requests));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let queue = queue.clone();
            let address = address.to_owned();
            tokio::spawn(async move {
                let mut connection = tokio::net::TcpStream::connect(&address).await.unwrap();
                connection.set_nodelay(true).unwrap();
                loop {
                    let Some(request) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    assert_eq!(exchange_once(&mut connection, &request).await, Some(200));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Writes one request and reads one response (headers + Content-Length body); its status.
pub async fn exchange_once(connection: &mut tokio::net::TcpStream, request: &[u8]) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    connection.write_all(request).await.ok()?;
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let read = connection.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buffer[..end]).ok()?;
        let status = head.get(9..12)?.parse().ok()?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buffer.len() < end + 4 + length {
            let read = connection.read(&mut chunk).await.ok()?;
            if read == 0 {
                return None;
            }
            buffer.extend_from_slice(&chunk[..read]);
        }
        return Some(status);
    }
}

/// Declares the service's exchange and a durable queue of `queue_type` (`classic`, `quorum`)
/// bound to it with `routing_key`, as a downstream consumer or the egress consumer would.
pub async fn declare_bound_queue(
    channel: &lapin::Channel,
    exchange: &str,
    queue: &str,
    queue_type: &str,
    routing_key: &str,
) {
    use lapin::{
        options::{QueueBindOptions, QueueDeclareOptions},
        types::{AMQPValue, FieldTable},
    };
    ingress_egress::bus::amqp::topology::declare_exchange(channel, exchange)
        .await
        .unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, arguments)
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}
