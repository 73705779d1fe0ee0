//! Egress throughput and cost, as a ratio against a bare consumer measured in the same run.
//!
//! `BENCH_EVENTS` reply events (default 20,000) to 1,000 recipients from one sender are queued
//! on a durable quorum queue bound to the egress routing key before the consumer starts. A fake
//! Messages endpoint in this process answers every create with 201 and a Message resource and
//! counts the TCP connections it accepts. Then, each in a process of its own, at the same
//! prefetch (`BENCH_PREFETCH`, default 32 like `AMQP_PREFETCH`):
//!
//! 1. Baseline: a bare lapin consumer that POSTs each event's text with reqwest and acks.
//! 2. The same bare consumer that also publishes, before each ack, the one thing the contract
//!    adds to every reply: its status event on `internal.egress.status.v1`, with the contract's
//!    properties, confirmed. It tells how much of the gap is that event's cost alone.
//! 3. The release binary with `TWILIO_MAX_SEND_RATE` high: parse, plan, ledger, rate limit, send,
//!    status event, ack.
//!
//! For each: messages per second (first to last create at the endpoint), CPU microseconds per
//! message and peak RSS of the consuming process, the local broker's CPU microseconds per
//! message over the same span (when RabbitMQ runs on this machine), TCP connections opened,
//! duplicates (creates with an idempotency token seen before). Prints the service's ratio to the
//! bare consumer (target ≥ 0.70) and to the bare consumer with status events, and whether the
//! connections opened stay within the sends in flight plus a few.
//!
//! Run: `cargo bench --bench egress_throughput` (needs RabbitMQ at `AMQP_URL`, default
//! 127.0.0.1:5672). Environment: `BENCH_EVENTS` (20000), `BENCH_PREFETCH` (32),
//! `BENCH_STATE_PARENT` (where the service's `OUTBOX_DIR`, and with it the send ledger, goes;
//! the system's temporary directory by default, `/dev/shm` for a memory file system as on
//! Cloud Run), `BENCH_ROUNDS` (3: the three consumers are measured that many times, back to
//! back, and the median ratios are printed), `BENCH_SERVICE_ENV` (extra `NAME=value` pairs,
//! separated by spaces, for the service's process only, to try a setting without touching the
//! baseline).

use std::{
    collections::HashSet,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::{stream, StreamExt};
use ingress_egress::egress::{
    events::{status_message, EgressStatusEvent, Outcome as StatusOutcome, PartReport},
    sink::TextInfo,
};
use lapin::{
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeleteOptions,
    },
    types::FieldTable,
    BasicProperties, Connection, ConnectionProperties,
};
use support::{amqp_url, env_or, ProcessStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/mod.rs"]
mod support;

const ROUTING_KEY: &str = "internal.egress.v1";
const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
const SENDER: &str = "+15005550006";
const RECIPIENTS: usize = 1000;
/// Set in the baseline consumer's process (this bench binary, started again).
const ROLE: &str = "BENCH_EGRESS_ROLE";
/// [`ROLE`] of the baseline that publishes a status event per reply.
const WITH_STATUS: &str = "with-status";

#[tokio::main]
async fn main() {
    if std::env::var(ROLE).is_ok() {
        return baseline_consumer().await;
    }
    let amqp = amqp_url();
    let events = env_or("BENCH_EVENTS", 20_000);
    let prefetch = env_or("BENCH_PREFETCH", 32);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let connection = match Connection::connect(&amqp, ConnectionProperties::default()).await {
        Ok(connection) => connection,
        Err(error) => {
            eprintln!("skipping benchmark: RabbitMQ not reachable at {amqp}: {error}");
            return;
        }
    };
    let endpoint = FakeMessages::start().await;
    println!("machine: {}", support::machine());
    println!(
        "events: {events} to {RECIPIENTS} recipients from one sender, prefetch {prefetch}, \
         quorum queue"
    );
    println!(
        "                                      msg/s   CPU us/msg  broker us  peak RSS  connections  duplicates"
    );
    // The machine is noisy (the same bare consumer has measured 7,600 and 13,900 msg/s a few
    // minutes apart): the three consumers are measured `BENCH_ROUNDS` times back to back and the
    // median ratios reported.
    let mut ratios = Vec::new();
    let mut ratios_with_status = Vec::new();
    for round in 1..=rounds {
        println!("round {round}");
        let measure_as = |who| measure(&connection, &endpoint, who, &amqp, prefetch, events);
        let baseline = measure_as(Consumer::Baseline).await.rate;
        let with_status = measure_as(Consumer::BaselineWithStatus).await.rate;
        let service = measure_as(Consumer::Service).await;
        let (connections, service) = (service.connections, service.rate);
        println!(
            "ratio: {:.2} (to the bare consumer with status events: {:.2}, which runs at {:.2} \
             of the bare one); service opened {connections} connections for {prefetch} sends in \
             flight",
            service / baseline,
            service / with_status,
            with_status / baseline,
        );
        ratios.push(service / baseline);
        ratios_with_status.push(service / with_status);
    }
    println!(
        "ratio, median of {rounds}: {:.2} (target >= 0.70; connections target <= {prefetch} + a few)",
        support::median(&mut ratios)
    );
    println!(
        "ratio to the bare consumer with status events, median of {rounds}: {:.2}",
        support::median(&mut ratios_with_status)
    );
    let _ = connection.close(200, "done".into()).await;
}

/// Queues `events` on a fresh exchange and queue, lets `who` consume them and prints its line.
async fn measure(
    connection: &Connection,
    endpoint: &FakeMessages,
    who: Consumer,
    amqp: &str,
    prefetch: usize,
    events: usize,
) -> Outcome {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let queue = format!("{name}.egress");
    let channel = connection.create_channel().await.unwrap();
    queue_events(&channel, &name, &queue, events).await;
    endpoint.reset();
    let mut child = who.start(amqp, &name, &queue, &endpoint.url, prefetch, events);
    let result = endpoint.wait_for(&mut child, events).await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(state_dir(&name));
    for queue in [queue.clone(), format!("{queue}.instances")] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(name.as_str().into(), Default::default())
        .await;
    let _ = channel.close(200, "done".into()).await;
    println!(
        "{:<36} {:>7.0} {:>11.0} {:>10} {:>6.1} MB {:>12} {:>11}",
        who.label(),
        result.rate,
        result.cpu_micros_per_message,
        result
            .broker_cpu_micros_per_message
            .map_or("-".to_owned(), |cpu| format!("{cpu:.0}")),
        result.peak_rss_kb as f64 / 1024.0,
        result.connections,
        result.duplicates,
    );
    result
}

#[derive(Clone, Copy)]
enum Consumer {
    Baseline,
    BaselineWithStatus,
    Service,
}

impl Consumer {
    fn label(self) -> &'static str {
        match self {
            Consumer::Baseline => "bare lapin consumer + reqwest",
            Consumer::BaselineWithStatus => "bare consumer + status events",
            Consumer::Service => "service (ledger, status events)",
        }
    }

    fn start(
        self,
        amqp: &str,
        exchange: &str,
        queue: &str,
        endpoint: &str,
        prefetch: usize,
        events: usize,
    ) -> Child {
        let command = match self {
            Consumer::Baseline | Consumer::BaselineWithStatus => {
                let mut command = Command::new(std::env::current_exe().unwrap());
                let role = match self {
                    Consumer::BaselineWithStatus => WITH_STATUS,
                    _ => "bare",
                };
                command
                    .env(ROLE, role)
                    .env("BENCH_EXCHANGE", exchange)
                    .env("BENCH_QUEUE", queue)
                    .env("BENCH_ENDPOINT", endpoint)
                    .env("BENCH_PREFETCH", prefetch.to_string())
                    .env("BENCH_EVENTS", events.to_string());
                command
            }
            Consumer::Service => {
                let outbox = state_dir(exchange);
                let mut command = Command::new(env!("CARGO_BIN_EXE_ingress-egress"));
                command
                    .env("PORT", support::free_port().to_string())
                    .env("AMQP_EXCHANGE", exchange)
                    .env("AMQP_EGRESS_QUEUE", queue)
                    .env("AMQP_PREFETCH", prefetch.to_string())
                    .env("OUTBOX_DIR", outbox)
                    .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
                    .env("TWILIO_AUTH_TOKEN", "bench-auth-token")
                    .env("TWILIO_API_BASE_URL", endpoint)
                    .env("TWILIO_CONVERSATIONS_BASE_URL", endpoint)
                    .env("TWILIO_PHONE_NUMBER", SENDER)
                    .env("TWILIO_MAX_SEND_RATE", "1000000")
                    .env("PUBLIC_BASE_URL", "https://bench.example.com")
                    .env("LOG_LEVEL", "warn")
                    .env("LOG_FORMAT", "json")
                    .envs(support::service_env());
                command
            }
        };
        let mut command = command;
        command
            .env("AMQP_URL", amqp)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("consumer starts")
    }
}

/// The service's `OUTBOX_DIR` (and with it the send ledger's files, without Redis): in the
/// system's temporary directory unless `BENCH_STATE_PARENT` names another, for example
/// `/dev/shm`, a memory file system as on Cloud Run.
fn state_dir(exchange: &str) -> std::path::PathBuf {
    std::env::var_os("BENCH_STATE_PARENT")
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from)
        .join(format!("{exchange}-outbox"))
}

/// Declares `queue` (durable, quorum, as the service declares it) bound to the egress routing key
/// of `exchange`, and publishes `events` reply events to it, confirmed.
async fn queue_events(channel: &lapin::Channel, exchange: &str, queue: &str, events: usize) {
    support::declare_bound_queue(channel, exchange, queue, "quorum", ROUTING_KEY).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    stream::iter(0..events)
        .map(|i| async move {
            let body = serde_json::to_vec(&reply_event(i)).unwrap();
            channel
                .basic_publish(
                    exchange.into(),
                    ROUTING_KEY.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into())
                        .with_message_id(format!("bench:{i}").into()),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        })
        .buffer_unordered(256)
        .collect::<()>()
        .await;
}

/// Reply event `i`: to recipient `i mod 1000`, from the one sender.
fn reply_event(i: usize) -> serde_json::Value {
    let to = format!("+1415{:07}", i % RECIPIENTS);
    serde_json::json!({
        "v": "2",
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "traceId": format!("{:032x}", i + 1),
        "type": "chat.message.v1",
        "ingress": {"ingressAt": "2026-01-01T00:00:00Z", "source": "ingress.twilio",
                    "connector": "twilio", "channel": to},
        "identity": {"external": {"id": to, "platform": "twilio",
                                  "metadata": {"channelType": "sms"}}},
        "egress": {"destination": "internal.egress.v1", "connector": "twilio", "type": "chat",
                   "channel": to, "metadata": {"twilio": {"from": SENDER}}},
        "routing": {"stage": "reply", "slip": [], "history": []},
        "message": {"id": format!("reply-{i}"), "role": "assistant",
                    "text": format!("Thanks for your message! This is reply {i}, sent by the benchmark.")}
    })
}

/// What one consumer did.
struct Outcome {
    rate: f64,
    cpu_micros_per_message: f64,
    /// The local broker's CPU over the same span, when it runs on this machine.
    broker_cpu_micros_per_message: Option<f64>,
    peak_rss_kb: u64,
    connections: u64,
    duplicates: u64,
}

/// A Messages endpoint that creates everything at once (HTTP/1.1, keep-alive).
struct FakeMessages {
    url: String,
    state: Arc<EndpointState>,
}

#[derive(Default)]
struct EndpointState {
    accepts: AtomicU64,
    creates: AtomicU64,
    duplicates: AtomicU64,
    tokens: Mutex<HashSet<Vec<u8>>>,
    first_create: Mutex<Option<Instant>>,
    last_create: Mutex<Option<Instant>>,
}

impl FakeMessages {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(EndpointState::default());
        let accepting = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((connection, _)) = listener.accept().await else {
                    continue;
                };
                accepting.accepts.fetch_add(1, Ordering::Relaxed);
                let _ = connection.set_nodelay(true);
                tokio::spawn(serve(connection, accepting.clone()));
            }
        });
        Self { url, state }
    }

    fn reset(&self) {
        let state = &self.state;
        state.accepts.store(0, Ordering::SeqCst);
        state.creates.store(0, Ordering::SeqCst);
        state.duplicates.store(0, Ordering::SeqCst);
        state.tokens.lock().unwrap().clear();
        *state.first_create.lock().unwrap() = None;
        *state.last_create.lock().unwrap() = None;
    }

    /// Waits until `events` messages were created (at most five minutes).
    async fn wait_for(&self, child: &mut Child, events: usize) -> Outcome {
        let process = ProcessStats::of(child.id());
        let broker = support::local_broker();
        let state = &self.state;
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut cpu_at_first = None;
        let mut broker_cpu_at_first = 0.0;
        loop {
            let created = state.creates.load(Ordering::SeqCst) as usize;
            if created > 0 && cpu_at_first.is_none() {
                cpu_at_first = Some(process.cpu_seconds());
                broker_cpu_at_first = broker.as_ref().map_or(0.0, ProcessStats::cpu_seconds);
            }
            if created >= events {
                break;
            }
            if Instant::now() > deadline {
                panic!("only {created} of {events} messages created in five minutes");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the consumer exited early ({status}) after {created} creates");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let cpu = process.cpu_seconds() - cpu_at_first.unwrap_or(0.0);
        let broker_cpu = broker
            .as_ref()
            .map(|broker| broker.cpu_seconds() - broker_cpu_at_first);
        // Let the last acks and status events go out before reading the peak.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let first = state.first_create.lock().unwrap().expect("created");
        let last = state.last_create.lock().unwrap().expect("created");
        let created = state.creates.load(Ordering::SeqCst);
        Outcome {
            rate: (created - 1) as f64 / (last - first).as_secs_f64(),
            cpu_micros_per_message: cpu * 1e6 / created as f64,
            broker_cpu_micros_per_message: broker_cpu.map(|cpu| cpu * 1e6 / created as f64),
            peak_rss_kb: process.peak_rss_kb(),
            connections: state.accepts.load(Ordering::SeqCst),
            duplicates: state.duplicates.load(Ordering::SeqCst),
        }
    }
}

/// Serves one keep-alive connection: every POST creates a message, anything else lists none.
async fn serve(mut connection: tokio::net::TcpStream, state: Arc<EndpointState>) {
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match connection.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            match connection.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        buffer.drain(..head_end + length);
        let (status, body) = if head.starts_with("POST ") {
            let number = state.creates.fetch_add(1, Ordering::SeqCst);
            let now = Instant::now();
            state.first_create.lock().unwrap().get_or_insert(now);
            *state.last_create.lock().unwrap() = Some(now);
            if let Some(token) = header("i-twilio-idempotency-token") {
                if !state.tokens.lock().unwrap().insert(token.into_bytes()) {
                    state.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            (
                "201 Created",
                format!(
                    "{{\"sid\":\"SM{number:032x}\",\"account_sid\":\"{ACCOUNT_SID}\",\
                     \"status\":\"queued\",\"num_segments\":\"1\",\"num_media\":\"0\",\
                     \"direction\":\"outbound-api\",\"api_version\":\"2010-04-01\",\
                     \"price\":null,\"error_code\":null,\"error_message\":null}}"
                ),
            )
        } else {
            ("200 OK", "{\"messages\":[]}".to_owned())
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if connection.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The baseline: consume with the same prefetch, POST each event's text, ack; exits after
/// `BENCH_EVENTS` acks. As [`WITH_STATUS`], it publishes the reply's status event (built by the
/// service's own code, confirmed on a channel of its own) before each ack.
async fn baseline_consumer() {
    let with_status = std::env::var(ROLE).is_ok_and(|role| role == WITH_STATUS);
    let queue = std::env::var("BENCH_QUEUE").unwrap();
    let endpoint = std::env::var("BENCH_ENDPOINT").unwrap();
    let prefetch = env_or("BENCH_PREFETCH", 32) as u16;
    let events = env_or("BENCH_EVENTS", 20_000);
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let status_publisher = if with_status {
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let exchange = std::env::var("BENCH_EXCHANGE").unwrap();
        Some(Arc::new((channel, exchange)))
    } else {
        None
    };
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench-baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("{endpoint}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json");
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let finished = done.clone();
    tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.unwrap();
            let (http, url, acked, done) = (http.clone(), url.clone(), acked.clone(), done.clone());
            let status_publisher = status_publisher.clone();
            tokio::spawn(async move {
                let event: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
                let text = event["message"]["text"].as_str().unwrap_or_default();
                let to = event["egress"]["channel"].as_str().unwrap_or_default();
                let from = event["egress"]["metadata"]["twilio"]["from"]
                    .as_str()
                    .unwrap_or_default();
                let response = http
                    .post(&url)
                    .basic_auth(ACCOUNT_SID, Some("bench-auth-token"))
                    .form(&[("To", to), ("From", from), ("Body", text)])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                let created: serde_json::Value = response.json().await.unwrap();
                let sid = created["sid"].as_str().expect("a Message SID");
                if let Some(publisher) = &status_publisher {
                    let (channel, exchange) = &**publisher;
                    let message_id = delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|id| id.to_string());
                    let status = sent_status(&event, message_id.clone(), to, text, sid);
                    let mut message =
                        status_message(message_id.as_deref().unwrap_or_default(), &status);
                    // The service's status event continues the reply's trace.
                    message.trace_parent = event["traceId"]
                        .as_str()
                        .map(|trace| format!("00-{trace}-{:016x}-01", delivery.delivery_tag));
                    let confirmation = channel
                        .basic_publish(
                            exchange.as_str().into(),
                            message.topic.as_str().into(),
                            BasicPublishOptions::default(),
                            message.body.as_bytes(),
                            ingress_egress::bus::amqp::properties(&message),
                        )
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                    assert!(confirmation.is_ack(), "the broker confirms");
                }
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                if acked.fetch_add(1, Ordering::SeqCst) + 1 >= events as u64 {
                    done.notify_one();
                }
            });
        }
    });
    finished.notified().await;
    // Stays until killed, so its peak memory can still be read.
    std::future::pending::<()>().await;
}

/// The status event of a reply sent in one part, as the service reports it.
fn sent_status(
    event: &serde_json::Value,
    event_message_id: Option<String>,
    to: &str,
    text: &str,
    sid: &str,
) -> EgressStatusEvent {
    let text = TextInfo {
        characters: text.chars().count(),
        encoding: Some("GSM-7"),
        segments: 1,
    };
    EgressStatusEvent {
        correlation_id: event["correlationId"].as_str().map(str::to_owned),
        connector: "twilio".to_owned(),
        target: Some(to.to_owned()),
        status: StatusOutcome::Sent,
        provider_sid: Some(sid.to_owned()),
        provider_sids: vec![sid.to_owned()],
        error_code: None,
        http_status: None,
        reason: None,
        attempts: 1,
        parts: 1,
        parts_sent: 1,
        segments: 1,
        part_details: vec![PartReport {
            index: 0,
            text,
            media: 0,
            provider_sid: Some(sid.to_owned()),
            attempts: 1,
            resolved_by: None,
        }],
        event_message_id,
        at: chrono::Utc::now(),
    }
}
