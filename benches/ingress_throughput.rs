//! Ingress throughput, latency and cost, as ratios against a bare publisher measured in the same
//! run, to the same kind of queue, at the same concurrency.
//!
//! For each queue type (classic and quorum) a durable queue is bound to the ingress routing key,
//! as downstream consumers bind theirs in production. Then:
//!
//! 1. Baseline: a bare lapin publisher with confirms, `BENCH_CONCURRENCY` publishes in flight on
//!    one channel, for `BENCH_SECONDS`; its rate and the latency of each publish → confirm. It
//!    publishes what the service publishes: a body of the envelope's size with the AMQP
//!    properties and CloudEvents headers of the contract, built by the service's own code
//!    ([`ingress_egress::bus::amqp::properties`]). The broker's work per message grows with
//!    those properties, so the same publisher is also measured with a message id as its only
//!    property, and printed for reference (what the contract's properties cost the broker).
//! 2. The release binary receiving signed SMS webhooks (signature → envelope → dedupe →
//!    confirmed publish → 200) from `wrk` in a separate process, `BENCH_CONCURRENCY`
//!    keep-alive connections, for `BENCH_SECONDS`, replaying pre-signed unique webhooks
//!    (`benches/support/replay.lua`); its rate and latency as wrk sees them, the service's peak
//!    resident memory and CPU seconds per 1,000 webhooks, and `GET /healthz` over the same
//!    connections (the HTTP ceiling of this machine).
//!
//! Prints the ratios: throughput at least 0.70 of the baseline, p99 at most 2× the baseline's
//! p99 confirm latency; and the throughput ratio against the message-id-only publisher. Also
//! the binary's size (stripped, as the release profile builds it) and the time from exec to
//! `/readyz` 200.
//!
//! Run: `cargo bench --bench ingress_throughput` (needs `wrk` on the PATH and RabbitMQ at
//! `AMQP_URL`, default 127.0.0.1:5672). Environment: `BENCH_SECONDS` (default 10),
//! `BENCH_CONCURRENCY` (64), `BENCH_QUEUE_TYPES` (`classic,quorum`), `BENCH_ROUNDS` (3: per
//! queue type the measurements are made that many times, back to back, and the median ratios
//! printed), `BENCH_WRK_THREADS` (1), `BENCH_SERVICE_ENV` (extra `NAME=value` pairs, separated
//! by spaces, for the service only).
//! Set `BENCH_KEEP_SERVICE_SECONDS` to leave the service under load that long longer (to attach
//! a profiler; see README "Performance").

use std::{
    io::Write,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{future, stream, StreamExt};
use ingress_egress::{bus::BusMessage, envelope::topics};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions, QueuePurgeOptions},
    BasicProperties, Connection, ConnectionProperties,
};
use support::{amqp_url, env_or, Percentiles, ProcessStats};

#[path = "support/mod.rs"]
mod support;

const TOKEN: &str = "bench-auth-token";
const PUBLIC_BASE_URL: &str = "https://bench.example.com";
const WEBHOOK_PATH: &str = "/webhooks/twilio/sms";
const ROUTING_KEY: &str = "internal.ingress.v1";
const REPLAY_LUA: &str = include_str!("support/replay.lua");

struct Baseline {
    rate: f64,
    confirm: Percentiles,
}

/// The properties the bare publisher gives each message.
#[derive(Clone, Copy)]
enum Properties {
    /// Those the service gives every message (the contract's AMQP properties and headers).
    AsTheService,
    /// A message id and persistence only.
    MessageIdOnly,
}

struct Measured {
    rate: f64,
    latency: Percentiles,
    errors: u64,
    reused: u64,
    peak_rss_kb: u64,
    cpu_seconds_per_1000: f64,
    ready: Duration,
    http_ceiling: f64,
}

#[tokio::main]
async fn main() {
    let amqp = amqp_url();
    let seconds = env_or("BENCH_SECONDS", 10) as u64;
    let concurrency = env_or("BENCH_CONCURRENCY", 64);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let queue_types =
        std::env::var("BENCH_QUEUE_TYPES").unwrap_or_else(|_| "classic,quorum".into());
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("skipping benchmark: wrk is not installed (apt-get install wrk)");
        return;
    }
    let connection = match Connection::connect(&amqp, ConnectionProperties::default()).await {
        Ok(connection) => connection,
        Err(error) => {
            eprintln!("skipping benchmark: RabbitMQ not reachable at {amqp}: {error}");
            return;
        }
    };
    let binary = env!("CARGO_BIN_EXE_ingress-egress");
    println!("machine: {}", support::machine());
    println!(
        "binary: {:.1} MB with symbols (the bench profile), {:.1} MB stripped (as the release \
         profile and the image build it)",
        megabytes(std::path::Path::new(binary)),
        stripped_megabytes(binary)
    );
    println!(
        "concurrency: {concurrency}, {seconds} s per measurement, load from wrk (separate process), \
         {rounds} rounds per queue type"
    );
    for queue_type in queue_types
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let queue = format!("{name}.ingress");
        let channel = connection.create_channel().await.unwrap();
        support::declare_bound_queue(&channel, &name, &queue, queue_type, ROUTING_KEY).await;

        // Each measurement starts from an empty queue: a backlog left by the one before would
        // slow the broker down for the second.
        let empty = || async {
            channel
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await
                .expect("queue purged");
        };
        println!();
        println!("== {queue_type} queue (durable, bound to {ROUTING_KEY}) ==");
        // The machine is noisy (the same bare publisher has measured 10,000 and 11,500 msg/s
        // minutes apart): the three are measured `BENCH_ROUNDS` times back to back and the
        // median ratios reported.
        let mut throughput = Vec::new();
        let mut p99 = Vec::new();
        let mut of_id_only = Vec::new();
        for round in 1..=rounds {
            empty().await;
            let baseline =
                bare_publisher(&amqp, &name, seconds, concurrency, Properties::AsTheService).await;
            empty().await;
            let measured = service(&amqp, &name, seconds, concurrency, baseline.rate).await;
            empty().await;
            let id_only = bare_publisher(
                &amqp,
                &name,
                seconds,
                concurrency,
                Properties::MessageIdOnly,
            )
            .await;
            report(round, &baseline, &id_only, &measured);
            throughput.push(measured.rate / baseline.rate);
            p99.push(measured.latency.p99 / baseline.confirm.p99);
            of_id_only.push(measured.rate / id_only.rate);
        }
        println!(
            "{queue_type} queue, median of {rounds}: throughput {:.2} (target >= 0.70), p99 {:.2}x \
             the bare p99 confirm (target <= 2.0); throughput {:.2} of the message-id-only publisher",
            support::median(&mut throughput),
            support::median(&mut p99),
            support::median(&mut of_id_only)
        );
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = channel
            .queue_delete(
                format!("{name}.egress").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
        let _ = channel
            .exchange_delete(name.as_str().into(), Default::default())
            .await;
        let _ = channel.close(200, "done".into()).await;
    }
    let _ = connection.close(200, "done".into()).await;
}

fn megabytes(path: &std::path::Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1e6)
}

/// The size of a stripped copy of `binary` (0 without `strip`).
fn stripped_megabytes(binary: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("stripped");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&copy)
        .arg(binary)
        .status()
        .is_ok_and(|status| status.success());
    if stripped {
        megabytes(&copy)
    } else {
        0.0
    }
}

fn report(round: usize, baseline: &Baseline, id_only: &Baseline, measured: &Measured) {
    println!(
        "round {round}                                          msg/s      p50      p99     p999"
    );
    println!(
        "bare lapin publisher (confirm latency)         {:>7.0} {}",
        baseline.rate, baseline.confirm
    );
    println!(
        "service, webhook -> confirmed publish          {:>7.0} {}",
        measured.rate, measured.latency
    );
    println!(
        "for reference: bare publisher, message id only {:>7.0} {}",
        id_only.rate, id_only.confirm
    );
    println!(
        "ratio: throughput {:.2} (target >= 0.70), p99 {:.2}x the bare p99 confirm (target <= 2.0); \
         throughput {:.2} of the message-id-only publisher",
        measured.rate / baseline.rate,
        measured.latency.p99 / baseline.confirm.p99,
        measured.rate / id_only.rate
    );
    println!(
        "service: peak RSS {:.1} MB, CPU {:.3} s per 1,000 webhooks, exec -> /readyz 200 in {} ms, \
         GET /healthz ceiling {:.0} req/s",
        measured.peak_rss_kb as f64 / 1024.0,
        measured.cpu_seconds_per_1000,
        measured.ready.as_millis(),
        measured.http_ceiling
    );
    if measured.errors > 0 || measured.reused > 0 {
        println!(
            "warning: {} errors or non-2xx answers, {} webhooks replayed twice (dedupe short-cut)",
            measured.errors, measured.reused
        );
    }
}

/// Confirmed publishes to `exchange` for `seconds` with `concurrency` in flight on one channel,
/// after a one-second warm-up.
async fn bare_publisher(
    amqp: &str,
    exchange: &str,
    seconds: u64,
    concurrency: usize,
    properties: Properties,
) -> Baseline {
    let connection = Connection::connect(amqp, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = Arc::new(vec![b'x'; support::ENVELOPE_BYTES]);
    let run = |duration: Duration| {
        let channel = channel.clone();
        let body = body.clone();
        async move {
            let started = Instant::now();
            let until = started + duration;
            let latencies: Vec<Duration> = stream::iter(0u64..)
                .take_while(|_| future::ready(Instant::now() < until))
                .map(|i| {
                    let channel = channel.clone();
                    let body = body.clone();
                    async move {
                        let sent = Instant::now();
                        let confirmation = channel
                            .basic_publish(
                                exchange.into(),
                                ROUTING_KEY.into(),
                                BasicPublishOptions::default(),
                                &body,
                                message_properties(properties, i),
                            )
                            .await
                            .expect("published")
                            .await
                            .expect("confirmed");
                        assert!(confirmation.is_ack(), "the broker confirms");
                        sent.elapsed()
                    }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
            (rate, latencies)
        }
    };
    run(Duration::from_secs(1)).await;
    let (rate, latencies) = run(Duration::from_secs(seconds)).await;
    let _ = connection.close(200, "done".into()).await;
    Baseline {
        rate,
        confirm: Percentiles::of(latencies),
    }
}

/// The service under wrk for `seconds` (after a two-second warm-up), publishing to `exchange`.
async fn service(
    amqp: &str,
    exchange: &str,
    seconds: u64,
    concurrency: usize,
    expected_rate: f64,
) -> Measured {
    let port = support::free_port();
    let outbox = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingress-egress"))
        .env("PORT", port.to_string())
        .env("AMQP_URL", amqp)
        .env("AMQP_EXCHANGE", exchange)
        .env("AMQP_EGRESS_QUEUE", format!("{exchange}.egress"))
        .env("TWILIO_AUTH_TOKEN", TOKEN)
        .env("PUBLIC_BASE_URL", PUBLIC_BASE_URL)
        .env("OUTBOX_DIR", outbox.path())
        .env("LOG_LEVEL", "warn")
        .env("LOG_FORMAT", "json")
        .envs(support::service_env())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("service starts");
    let address = format!("127.0.0.1:{port}");
    let ready = support::wait_ready_fast(&address, started).await;

    // Enough unique webhooks that none is sent twice (a duplicate is answered without a
    // publish), split among wrk's threads.
    let threads = env_or("BENCH_WRK_THREADS", 1).max(1);
    let needed = (expected_rate * 2.0 * seconds as f64) as usize + 20_000;
    let warm = write_requests(threads, 0..8_000);
    let measured = write_requests(threads, 8_000..8_000 + needed);
    let url = format!("http://{address}");
    wrk(&url, warm.path(), threads, concurrency, 2);

    let linger = std::env::var("BENCH_KEEP_SERVICE_SECONDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|linger| {
            let more = 8_000 + needed..8_000 + needed + 2 * expected_rate as usize * linger;
            (linger, write_requests(threads, more))
        });

    let process = ProcessStats::of(child.id());
    let before = process.cpu_seconds();
    let result = wrk(&url, measured.path(), threads, concurrency, seconds);
    let cpu = process.cpu_seconds() - before;
    if let Some((linger, more)) = linger {
        println!("service pid {} under load for {linger} s more", child.id());
        wrk(&url, more.path(), threads, concurrency, linger as u64);
    }
    let peak_rss_kb = process.peak_rss_kb();
    let http_ceiling = healthz_ceiling(&url, threads, concurrency);
    let _ = child.kill();
    let _ = child.wait();

    let requests = result.requests as f64;
    Measured {
        rate: requests / result.duration.as_secs_f64(),
        latency: result.latency,
        errors: result.errors,
        reused: result.reused,
        peak_rss_kb,
        cpu_seconds_per_1000: cpu / requests * 1000.0,
        ready,
        http_ceiling,
    }
}

/// Signed webhooks `indices`, one `signature<TAB>body` per line, in one file per wrk thread.
fn write_requests(threads: usize, indices: std::ops::Range<usize>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("replay.lua");
    std::fs::write(&script, REPLAY_LUA).unwrap();
    let mut files: Vec<_> = (0..threads)
        .map(|t| {
            std::io::BufWriter::new(
                std::fs::File::create(dir.path().join(format!("requests.{t}"))).unwrap(),
            )
        })
        .collect();
    let url = format!("{PUBLIC_BASE_URL}{WEBHOOK_PATH}");
    for i in indices {
        let params = support::sms_params(i);
        let signature = ingress_egress::connectors::twilio::ingress::signature::compute_signature(
            TOKEN, &url, &params,
        );
        let body = serde_urlencoded::to_string(&params).unwrap();
        writeln!(files[i % threads], "{signature}\t{body}").unwrap();
    }
    for mut file in files {
        file.flush().unwrap();
    }
    dir
}

struct WrkResult {
    requests: u64,
    duration: Duration,
    latency: Percentiles,
    errors: u64,
    reused: u64,
}

fn wrk(
    url: &str,
    dir: &std::path::Path,
    threads: usize,
    connections: usize,
    seconds: u64,
) -> WrkResult {
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout=10s")
        .arg("-s")
        .arg(dir.join("replay.lua"))
        .arg(url)
        .arg("--")
        .arg(dir)
        .arg(WEBHOOK_PATH)
        .output()
        .expect("wrk runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "wrk printed no result: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let micros = |name: &str| Duration::from_micros(field(name)).as_secs_f64() * 1000.0;
    WrkResult {
        requests: field("requests"),
        duration: Duration::from_micros(field("duration_us")),
        latency: Percentiles {
            p50: micros("p50"),
            p99: micros("p99"),
            p999: micros("p999"),
        },
        errors: field("errors"),
        reused: field("reused"),
    }
}

/// `GET /healthz` through wrk for three seconds: requests per second.
fn healthz_ceiling(url: &str, threads: usize, connections: usize) -> f64 {
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg("-d3s")
        .arg(format!("{url}/healthz"))
        .output()
        .expect("wrk runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The properties of the bare publisher's `i`th message.
fn message_properties(properties: Properties, i: u64) -> BasicProperties {
    let message_id = format!("twilio:SM{i:032x}");
    match properties {
        Properties::MessageIdOnly => BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(message_id.into()),
        Properties::AsTheService => ingress_egress::bus::amqp::properties(&BusMessage {
            topic: topics::INGRESS.into(),
            message_id,
            correlation_id: uuid::Uuid::new_v4().to_string(),
            kind: ingress_egress::envelope::CHAT_MESSAGE_V1.into(),
            source: ingress_egress::connectors::twilio::INGRESS_SOURCE.into(),
            timestamp: chrono::Utc::now(),
            trace_parent: Some(format!("00-{:032x}-{:016x}-01", u128::from(i) + 1, i + 1)),
            body: String::new(),
            possible_duplicate: false,
        }),
    }
}
