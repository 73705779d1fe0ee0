//! The Conversations socket transport under load, against the emulator of Twilio's side and
//! the local RabbitMQ, with baselines measured in the same run.
//!
//! - **Latency at a steady rate.** Messages are injected into the emulator at `BENCH_RATE`
//!   per second (default 200) across 10 conversations; each one's latency runs from the
//!   moment its injection request leaves this process to its delivery, as an envelope, to a
//!   consumer of RabbitMQ. Baselines: the injection request's own round trip (the emulator
//!   pushes the frame before answering it), and a bare lapin publish → consume at the same
//!   rate. Reported: p50/p99/max of each and the service's added p99 (end to end minus both
//!   baselines; target < 50 ms).
//! - **Idle cost.** CPU time of the release binary over `BENCH_IDLE_SECONDS` (default 30, one keepalive ping) of
//!   silence holding the socket with 1,000 conversations, against the same binary idle with
//!   webhooks only.
//! - **Memory.** Resident memory (VmRSS, and the peak VmHWM) once 1,000 conversations are
//!   synced, and after the load (target < 64 MB), against the same binary idle with webhooks
//!   only.
//!
//! Run: `(cd tests/twilio-emulator && npm ci)`, then
//! `cargo bench --features websocket --bench websocket_transport` (RabbitMQ at `AMQP_URL`,
//! default 127.0.0.1:5672). `BENCH_MESSAGES` (default 2000) sets how many are timed.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ingress_egress::bus::amqp::tap::Tap;
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions},
    BasicProperties, Connection, ConnectionProperties,
};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const CONVERSATIONS: usize = 1000;
const HOT_CONVERSATIONS: usize = 10;
const BOT: &str = "bot";
const ROUTING_KEY: &str = "internal.ingress.v1";

#[path = "support/mod.rs"]
mod support;

#[tokio::main]
async fn main() {
    let amqp = support::amqp_url();
    let messages = support::env_or::<usize>("BENCH_MESSAGES", 2000);
    let rate = support::env_or::<u64>("BENCH_RATE", 200);
    let idle = Duration::from_secs(support::env_or("BENCH_IDLE_SECONDS", 30));
    let emulator_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/twilio-emulator");
    if !emulator_dir.join("node_modules/ws").is_dir() {
        eprintln!("run `npm ci` in {} first", emulator_dir.display());
        std::process::exit(2);
    }
    if let Err(error) = Connection::connect(&amqp, ConnectionProperties::default()).await {
        eprintln!("skipping benchmark: RabbitMQ not reachable at {amqp}: {error}");
        return;
    }
    let exchange = format!("bench-ws-{}", uuid::Uuid::new_v4().simple());
    let interval = Duration::from_secs_f64(1.0 / rate as f64);

    let broker = bare_lapin_latency(&amqp, &exchange, messages, interval).await;

    let (_emulator, port) = start_emulator(&emulator_dir).await;
    let control = Control::new(port);
    let mut conversations = Vec::with_capacity(CONVERSATIONS);
    for _ in 0..CONVERSATIONS {
        let sid = control.post("/conversations", json!({})).await["sid"]
            .as_str()
            .expect("sid")
            .to_owned();
        control
            .post(
                &format!("/conversations/{sid}/participants"),
                json!({"address": "+15551230000", "proxyAddress": "+15550001111"}),
            )
            .await;
        control
            .post(
                &format!("/conversations/{sid}/participants"),
                json!({"identity": BOT}),
            )
            .await;
        conversations.push(sid);
    }

    let outbox = tempfile::tempdir().expect("temp dir");
    let webhook_only = Service::start(&amqp, &exchange, outbox.path(), None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let webhook_idle = webhook_only.cpu_over(idle).await;
    let (webhook_rss, _) = webhook_only.memory();
    drop(webhook_only);

    let outbox = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let service = Service::start(&amqp, &exchange, outbox.path(), Some(port)).await;
    service.until_synced(CONVERSATIONS).await;
    let synced_in = started.elapsed();
    let (synced_rss, _) = service.memory();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let socket_idle = service.cpu_over(idle).await;

    let (end_to_end, inject) = socket_latency(
        &amqp,
        &exchange,
        &control,
        &conversations[..HOT_CONVERSATIONS],
        messages,
        interval,
    )
    .await;
    let (loaded_rss, peak_rss) = service.memory();
    drop(service);
    delete_exchange(&amqp, &exchange).await;

    let mb = |kib: u64| kib as f64 / 1024.0;
    println!("rate {rate}/s, {messages} messages over {HOT_CONVERSATIONS} conversations, {CONVERSATIONS} conversations synced");
    println!("                                      p50       p99       max");
    for (name, stats) in [
        ("inject -> RabbitMQ consumer", &end_to_end),
        ("baseline: inject round trip", &inject),
        ("baseline: bare lapin publish->consume", &broker),
    ] {
        println!(
            "{name:<38}{:>7.2} ms{:>7.2} ms{:>7.2} ms",
            stats.p50, stats.p99, stats.max
        );
    }
    println!(
        "added by the service (p99 end to end - p99 inject - p99 broker): {:.2} ms (target < 50 ms)",
        end_to_end.p99 - inject.p99 - broker.p99
    );
    println!(
        "idle CPU over {idle:?}: socket with {CONVERSATIONS} conversations {:.1} ms ({:.3} %), \
         webhooks only {:.1} ms ({:.3} %)",
        socket_idle * 1000.0,
        socket_idle / idle.as_secs_f64() * 100.0,
        webhook_idle * 1000.0,
        webhook_idle / idle.as_secs_f64() * 100.0
    );
    println!(
        "RSS: {:.1} MB with {CONVERSATIONS} conversations synced (in {synced_in:.1?}), {:.1} MB after the load, \
         peak {:.1} MB (target < 64 MB); webhooks only, idle: {:.1} MB",
        mb(synced_rss),
        mb(loaded_rss),
        mb(peak_rss),
        mb(webhook_rss)
    );
}

struct Latencies {
    p50: f64,
    p99: f64,
    max: f64,
}

fn summarize(mut samples: Vec<Duration>) -> Latencies {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]);
    Latencies {
        p50: at(0.50),
        p99: at(0.99),
        max: ms(*samples.last().expect("samples")),
    }
}

/// A consumer bound to the exchange before anything is published.
async fn consumer(amqp: &str, exchange: &str) -> Tap {
    Tap::bind(amqp, exchange, ROUTING_KEY)
        .await
        .expect("a queue bound to the exchange")
}

/// Publish (with confirms) → consume latency of the broker alone, at the same rate.
async fn bare_lapin_latency(
    amqp: &str,
    exchange: &str,
    messages: usize,
    interval: Duration,
) -> Latencies {
    let mut consumer = consumer(amqp, exchange).await;
    let publisher = Connection::connect(amqp, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = publisher.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let sending = {
        let sent = sent.clone();
        let exchange = exchange.to_owned();
        tokio::spawn(async move {
            let body = vec![b'x'; 2000]; // about the size of a Conversations envelope
            let mut tick = tokio::time::interval(interval);
            for i in 0..messages {
                tick.tick().await;
                let id = format!("bare:{i}");
                sent.lock().unwrap().insert(id.clone(), Instant::now());
                // Like the service: each publish waits for the broker's confirm.
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        ROUTING_KEY.into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_message_id(id.into()),
                    )
                    .await
                    .expect("published")
                    .await
                    .expect("confirmed");
            }
        })
    };
    let mut samples = Vec::with_capacity(messages);
    while samples.len() < messages {
        let delivery = consumer
            .next(Duration::from_secs(60))
            .await
            .expect("a delivery within 60 s");
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        if let Some(at) = sent.lock().unwrap().remove(&id) {
            samples.push(at.elapsed());
        }
    }
    sending.await.expect("sender");
    summarize(samples)
}

/// Injects `messages` at `interval` round-robin into `conversations`; returns the inject →
/// consumer latencies and the injection round trips.
async fn socket_latency(
    amqp: &str,
    exchange: &str,
    control: &Control,
    conversations: &[String],
    messages: usize,
    interval: Duration,
) -> (Latencies, Latencies) {
    let mut consumer = consumer(amqp, exchange).await;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let round_trips: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let sending = {
        let sent = sent.clone();
        let round_trips = round_trips.clone();
        let control = control.clone();
        let conversations = conversations.to_vec();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut requests = Vec::with_capacity(messages);
            for i in 0..messages {
                tick.tick().await;
                let body = format!("bench message {i}: where is my order?");
                let conversation = conversations[i % conversations.len()].clone();
                let control = control.clone();
                let sent = sent.clone();
                let round_trips = round_trips.clone();
                // Each injection on its own task, so a slow answer does not hold the rate.
                requests.push(tokio::spawn(async move {
                    let at = Instant::now();
                    sent.lock().unwrap().insert(body.clone(), at);
                    control
                        .post(
                            &format!("/conversations/{conversation}/messages"),
                            json!({"author": "+15551230000", "body": body}),
                        )
                        .await;
                    round_trips.lock().unwrap().push(at.elapsed());
                }));
            }
            for request in requests {
                request.await.expect("injection");
            }
        })
    };
    let mut samples = Vec::with_capacity(messages);
    while samples.len() < messages {
        let delivery = consumer
            .next(Duration::from_secs(60))
            .await
            .expect("an envelope within 60 s");
        let arrived = Instant::now();
        let envelope: Value = serde_json::from_slice(&delivery.data).expect("JSON");
        let text = envelope["message"]["text"].as_str().unwrap_or_default();
        if let Some(at) = sent.lock().unwrap().remove(text) {
            samples.push(arrived - at);
        }
    }
    sending.await.expect("sender");
    let round_trips = std::mem::take(&mut *round_trips.lock().unwrap());
    (summarize(samples), summarize(round_trips))
}

async fn start_emulator(dir: &std::path::Path) -> (Child, u16) {
    let mut child = Command::new("node")
        .arg("server.js")
        .current_dir(dir)
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .await
        .expect("ready line");
    let ready: Value = serde_json::from_str(&line).expect("ready line is JSON");
    let port = ready["port"].as_u64().expect("port") as u16;
    (child, port)
}

#[derive(Clone)]
struct Control {
    base: String,
    http: reqwest::Client,
}

impl Control {
    fn new(port: u16) -> Self {
        Self {
            base: format!("http://127.0.0.1:{port}/_emulator"),
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("emulator answers");
        assert!(response.status().is_success(), "{path}");
        response.json().await.expect("JSON")
    }
}

/// The release binary; with `emulator_port`, holding the socket to it.
struct Service {
    child: Child,
    address: String,
    http: reqwest::Client,
}

impl Service {
    async fn start(
        amqp: &str,
        exchange: &str,
        outbox: &std::path::Path,
        emulator_port: Option<u16>,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ingress-egress"));
        command
            .env("PORT", port.to_string())
            .env("AMQP_URL", amqp)
            .env("AMQP_EXCHANGE", exchange)
            .env("AMQP_EGRESS_QUEUE", format!("{exchange}.egress"))
            .env("AMQP_EGRESS_QUEUE_TYPE", "classic")
            .env("OUTBOX_DIR", outbox)
            .env("TWILIO_AUTH_TOKEN", "bench-auth-token")
            .env("LOG_LEVEL", "warn")
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(emulator) = emulator_port {
            command
                .env("TWILIO_TRANSPORT", "websocket")
                .env(
                    "TWILIO_TWILSOCK_URL",
                    format!("ws://127.0.0.1:{emulator}/v3/wsconnect"),
                )
                .env("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000")
                .env("TWILIO_API_KEY", "SK00000000000000000000000000000000")
                .env("TWILIO_API_SECRET", "emulator-api-key-secret")
                .env(
                    "TWILIO_CHAT_SERVICE_SID",
                    "IS00000000000000000000000000000000",
                )
                .env("TWILIO_IDENTITY", BOT);
        }
        let child = command.spawn().expect("service starts");
        let service = Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = service
                .http
                .get(format!("{}/readyz", service.address))
                .send()
                .await
            {
                if response.status().is_success() {
                    return service;
                }
            }
            assert!(Instant::now() < deadline, "service not ready in 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn until_synced(&self, conversations: usize) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let snapshot: Value = self
                .http
                .get(format!("{}/_debug/twilio", self.address))
                .send()
                .await
                .expect("snapshot")
                .json()
                .await
                .expect("JSON");
            let socket = &snapshot["twilio"]["transport"]["socket"];
            let all_synced = socket["conversations"].as_array().is_some_and(|list| {
                list.len() == conversations
                    && list
                        .iter()
                        .all(|c| c["status"] == "joined" && c["catchingUp"] == false)
            });
            if all_synced {
                return;
            }
            assert!(Instant::now() < deadline, "not synced in 300 s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// CPU seconds (user + system) the process spends over `span`.
    async fn cpu_over(&self, span: Duration) -> f64 {
        let before = self.cpu_seconds();
        tokio::time::sleep(span).await;
        self.cpu_seconds() - before
    }

    fn cpu_seconds(&self) -> f64 {
        support::ProcessStats::of(self.pid()).cpu_seconds()
    }
}

async fn delete_exchange(amqp: &str, exchange: &str) {
    if let Ok(connection) = Connection::connect(amqp, ConnectionProperties::default()).await {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(
                    format!("{exchange}.egress").as_str().into(),
                    Default::default(),
                )
                .await;
            let _ = channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
    }
}
