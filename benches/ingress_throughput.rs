//! Ingress throughput and memory, as ratios against a baseline measured in the same run.
//!
//! Baseline: a bare lapin publisher with confirms, `CONCURRENCY` publishes in flight, to the local
//! RabbitMQ. Measured: the release binary receiving signed SMS webhooks from `CONCURRENCY`
//! keep-alive HTTP connections (signature → envelope → confirmed publish → 200), driven by a lean
//! client in this process. Also measured: `GET /healthz` over the same connections (the HTTP
//! ceiling of this machine). Reports the rates, the ratio to the baseline (target ≥ 0.70) and the
//! service's peak resident memory (target < 64 MB).
//!
//! Run: `cargo bench --bench ingress_throughput` (needs RabbitMQ at `AMQP_URL`, default
//! 127.0.0.1:5672). Environment: `BENCH_MESSAGES` (default 5000), `BENCH_CONCURRENCY` (64).

use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::Instant,
};

use futures_util::{stream, StreamExt};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    BasicProperties, Connection, ConnectionProperties,
};
use support::{load, signed_sms_requests, wait_ready};

#[path = "support/mod.rs"]
mod support;

const TOKEN: &str = "bench-auth-token";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let amqp = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let messages = env_or("BENCH_MESSAGES", 5000);
    let concurrency = env_or("BENCH_CONCURRENCY", 64);
    let exchange = format!("bench-{}", uuid::Uuid::new_v4().simple());

    let baseline = match bare_lapin_rate(&amqp, &exchange, messages, concurrency).await {
        Ok(rate) => rate,
        Err(error) => {
            eprintln!("skipping benchmark: RabbitMQ not reachable at {amqp}: {error}");
            return;
        }
    };
    let (service, http_ceiling, peak_rss_kb) =
        service_rate(&amqp, &exchange, messages, concurrency).await;

    println!("messages: {messages}, concurrency: {concurrency}");
    println!("bare lapin confirmed publishes: {baseline:>10.0} msg/s (baseline)");
    println!("GET /healthz (HTTP ceiling):    {http_ceiling:>10.0} req/s");
    println!("webhook -> confirmed publish:   {service:>10.0} msg/s");
    println!(
        "ratio to bare lapin: {:.2} (target >= 0.70)",
        service / baseline
    );
    println!("ratio to the HTTP ceiling: {:.2}", service / http_ceiling);
    println!(
        "service peak RSS: {:.1} MB (target < 64 MB)",
        peak_rss_kb as f64 / 1024.0
    );
}

async fn bare_lapin_rate(
    amqp: &str,
    exchange: &str,
    messages: usize,
    concurrency: usize,
) -> lapin::Result<f64> {
    let connection = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    ingress_egress::bus::amqp::topology::declare_exchange(&channel, exchange).await?;
    let body = Arc::new(vec![b'x'; 1800]); // about the size of an SMS envelope
    let started = Instant::now();
    stream::iter(0..messages)
        .map(|i| {
            let channel = channel.clone();
            let body = body.clone();
            async move {
                channel
                    .basic_publish(
                        exchange.into(),
                        "internal.ingress.v1".into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_message_id(format!("bench:{i}").into()),
                    )
                    .await?
                    .await
            }
        })
        .buffer_unordered(concurrency)
        .for_each(|r| async move {
            r.expect("confirmed");
        })
        .await;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let _ = connection.close(200, "done".into()).await;
    Ok(rate)
}

async fn service_rate(
    amqp: &str,
    exchange: &str,
    messages: usize,
    concurrency: usize,
) -> (f64, f64, u64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let outbox = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingress-egress"))
        .env("PORT", port.to_string())
        .env("AMQP_URL", amqp)
        .env("AMQP_EXCHANGE", exchange)
        .env("TWILIO_AUTH_TOKEN", TOKEN)
        .env("PUBLIC_BASE_URL", "https://bench.example.com")
        .env("OUTBOX_DIR", outbox.path())
        .env("LOG_LEVEL", "warn")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("service starts");
    let address = format!("127.0.0.1:{port}");
    wait_ready(&address).await;

    let webhooks = signed_sms_requests(&address, TOKEN, "https://bench.example.com", 0..messages);
    let healthz = format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").into_bytes();

    // The HTTP ceiling: the same client and server answering a trivial GET.
    let http_ceiling = load(&address, vec![healthz; messages], concurrency).await;
    let rate = load(&address, webhooks, concurrency).await;

    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let peak_rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    (rate, http_ceiling, peak_rss_kb)
}
