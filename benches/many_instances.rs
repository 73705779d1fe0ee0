//! Many replicas, as ratios against a baseline measured in the same run.
//!
//! 1. Ingress with Redis against without: the release binary receiving signed SMS webhooks from
//!    `BENCH_CONCURRENCY` keep-alive connections (signature → dedupe → confirmed publish →
//!    200), once with the in-process dedupe window and once with `REDIS_URL` (one `SET NX PX`
//!    per webhook). Target: at least 0.85.
//! 2. Egress with three instances against one: `BENCH_EVENTS` egress events to many
//!    recipients from many senders (so no sender's rate is the limit), `BENCH_PARTITIONS`,
//!    delivered to a minimal Twilio stand-in in this process that answers every create at once;
//!    the rate is measured at the stand-in from the first to the last create, after a warm-up
//!    that lets the partitions spread over the instances. Target: at least 2.5.
//!
//!    Each instance is held to `BENCH_INSTANCE_CPU` of one core (default 0.25) by a cgroup of
//!    its own, as a Cloud Run instance has its own vCPU: uncapped on a two-core machine, three
//!    instances, the broker and the stand-in would all compete for the same two cores and the
//!    ratio would measure the machine, not the design. Where cgroups cannot be written (not
//!    root, no cpu controller) the run says so and the instances are uncapped.
//!
//! Run: `cargo bench --bench many_instances` (needs RabbitMQ at `AMQP_URL`, default
//! 127.0.0.1:5672, and Redis at `REDIS_URL`, default 127.0.0.1:6379). Environment:
//! `BENCH_MESSAGES` (default 50000), `BENCH_CONCURRENCY` (64), `BENCH_EVENTS` (9000; shorter
//! runs swing more), `BENCH_PARTITIONS` (6), `BENCH_INSTANCE_CPU` (0.25; 0 leaves the
//! instances uncapped), `BENCH_ONLY` (`ingress` or `egress` to measure one ratio only),
//! `BENCH_ROUNDS` (3): each ratio is measured that many times, baseline and candidate back to
//! back, and the median is reported, since one short run on a shared machine can be off by a
//! third either way.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix_web::{web, App, HttpResponse, HttpServer};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions},
    BasicProperties, Connection, ConnectionProperties,
};
use support::{
    amqp_url, env_or, free_port, load, median, signed_sms_requests, wait_ready, ProcessStats,
};

#[path = "support/mod.rs"]
mod support;

const TOKEN: &str = "bench-auth-token";
const PUBLIC_BASE_URL: &str = "https://bench.example.com";

/// A CPU cgroup holding its processes to a share of one core; removed on drop.
struct CpuCap {
    dir: PathBuf,
}

impl CpuCap {
    /// A cgroup `name` limited to `share` of a core (v1 `cpu` controller or v2 `cpu.max`), or
    /// why there cannot be one.
    fn new(name: &str, share: f64) -> Result<Self, String> {
        const PERIOD_US: u64 = 100_000;
        let quota = ((share * PERIOD_US as f64) as u64).max(1_000);
        let v1 = PathBuf::from("/sys/fs/cgroup/cpu");
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let (dir, files) = if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(name);
            let files = vec![
                ("cpu.cfs_period_us", PERIOD_US.to_string()),
                ("cpu.cfs_quota_us", quota.to_string()),
            ];
            (dir, files)
        } else if v2.join("cgroup.controllers").exists() {
            (
                v2.join(name),
                vec![("cpu.max", format!("{quota} {PERIOD_US}"))],
            )
        } else {
            return Err("no cgroup cpu controller here".into());
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cap = Self { dir };
        for (file, value) in files {
            std::fs::write(cap.dir.join(file), value)
                .map_err(|e| format!("{}/{file}: {e}", cap.dir.display()))?;
        }
        Ok(cap)
    }

    fn add(&self, pid: u32) -> Result<(), String> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("{}: {e}", self.dir.display()))
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// One process of the service with `vars`, in `cap` if given; killed on drop.
struct Service {
    address: String,
    process: Child,
    _outbox: tempfile::TempDir,
    // After `process` is gone: a cgroup with a process in it cannot be removed.
    _cap: Option<CpuCap>,
}

impl Service {
    async fn start(vars: &BTreeMap<String, String>, instance: &str) -> Self {
        Self::start_capped(vars, instance, None).await
    }

    async fn start_capped(
        vars: &BTreeMap<String, String>,
        instance: &str,
        cap: Option<CpuCap>,
    ) -> Self {
        let port = free_port();
        let outbox = tempfile::tempdir().unwrap();
        let process = Command::new(env!("CARGO_BIN_EXE_ingress-egress"))
            .envs(vars)
            .env("PORT", port.to_string())
            .env("INSTANCE_ID", instance)
            .env("OUTBOX_DIR", outbox.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("service starts");
        if let Some(cap) = &cap {
            cap.add(process.id())
                .expect("the instance joins its cgroup");
        }
        let address = format!("127.0.0.1:{port}");
        wait_ready(&address).await;
        Self {
            address,
            process,
            _outbox: outbox,
            _cap: cap,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn base_vars(amqp: &str, name: &str) -> BTreeMap<String, String> {
    [
        ("AMQP_URL", amqp.to_owned()),
        ("AMQP_EXCHANGE", name.to_owned()),
        ("AMQP_EGRESS_QUEUE", format!("{name}.egress")),
        ("TWILIO_AUTH_TOKEN", TOKEN.to_owned()),
        ("PUBLIC_BASE_URL", PUBLIC_BASE_URL.to_owned()),
        ("LOG_LEVEL", "warn".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[tokio::main]
async fn main() {
    let amqp = amqp_url();
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    if Connection::connect(&amqp, ConnectionProperties::default())
        .await
        .is_err()
    {
        eprintln!("skipping benchmark: RabbitMQ not reachable at {amqp}");
        return;
    }
    let messages = env_or("BENCH_MESSAGES", 50_000);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let concurrency = env_or("BENCH_CONCURRENCY", 64);
    let events = env_or("BENCH_EVENTS", 9000);
    let partitions = env_or("BENCH_PARTITIONS", 6);
    let share: f64 = env_or("BENCH_INSTANCE_CPU", 0.25);
    let share = match CpuCap::new("ingress-egress-bench-probe", share) {
        _ if share <= 0.0 => None,
        Ok(_) => Some(share),
        Err(why) => {
            println!("instances uncapped ({why}): the three-to-one ratio measures shared cores");
            None
        }
    };

    // The machine is noisy: each ratio is taken in `rounds` rounds, baseline and candidate
    // measured back to back, and the median round counts.
    println!("messages: {messages}, concurrency: {concurrency}, rounds: {rounds}");
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only != "egress" {
        ingress_ratio(&amqp, &redis, messages, rounds, concurrency).await;
    }
    if only != "ingress" {
        egress_ratio(&amqp, &redis, events, rounds, partitions, share).await;
    }
}

/// Ingress with the Redis dedupe against the in-process one.
async fn ingress_ratio(
    amqp: &str,
    redis: &str,
    messages: usize,
    rounds: usize,
    concurrency: usize,
) {
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let without = ingress_rate(amqp, None, messages, concurrency).await;
        let with = ingress_rate(amqp, Some(redis), messages, concurrency).await;
        println!(
            "round {round}: webhook -> confirmed publish, in-process dedupe {without:>7.0} msg/s, \
             Redis dedupe {with:>7.0} msg/s, ratio {:.2}",
            with / without
        );
        ratios.push(with / without);
    }
    println!(
        "ratio with Redis: {:.2}, median of {rounds} (target >= 0.85)",
        median(&mut ratios)
    );
}

/// Three instances' egress against one's.
async fn egress_ratio(
    amqp: &str,
    redis: &str,
    events: usize,
    rounds: usize,
    partitions: usize,
    share: Option<f64>,
) {
    let cpu = share.map_or("uncapped".to_owned(), |share| {
        format!("{share} of a core each")
    });
    println!("egress events: {events}, partitions: {partitions}, instances: {cpu}");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let one = egress_rate(amqp, redis, 1, events, partitions, share).await;
        let three = egress_rate(amqp, redis, 3, events, partitions, share).await;
        println!(
            "round {round}: egress, one instance {one:>6.0} sends/s, three instances \
             {three:>6.0} sends/s, ratio {:.2}",
            three / one
        );
        ratios.push(three / one);
    }
    println!(
        "ratio three to one: {:.2}, median of {rounds} (target >= 2.5)",
        median(&mut ratios)
    );
}

/// Webhooks per second through one instance, with the dedupe window on `redis` or in process.
async fn ingress_rate(amqp: &str, redis: Option<&str>, messages: usize, concurrency: usize) -> f64 {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut vars = base_vars(amqp, &name);
    if let Some(redis) = redis {
        vars.insert("REDIS_URL".into(), redis.to_owned());
        vars.insert("REDIS_KEY_PREFIX".into(), format!("{name}:"));
    }
    let service = Service::start(&vars, &name).await;
    let webhooks = signed_sms_requests(&service.address, TOKEN, PUBLIC_BASE_URL, 0..messages);
    let rate = load(&service.address, webhooks, concurrency).await;
    drop(service);
    cleanup(amqp, &name, &[]).await;
    if let Some(redis) = redis {
        support::forget_redis_keys(redis, &format!("{name}:")).await;
    }
    rate
}

/// A Twilio stand-in that creates every message at once and records when.
async fn stand_in() -> (String, Arc<Mutex<Vec<Instant>>>) {
    let created: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let recorded = created.clone();
    let port = free_port();
    let server = HttpServer::new(move || {
        let created = recorded.clone();
        App::new().default_service(web::to(move |request: actix_web::HttpRequest| {
            let created = created.clone();
            async move {
                if request.method() != actix_web::http::Method::POST {
                    return HttpResponse::Ok().json(serde_json::json!({"messages": []}));
                }
                created.lock().unwrap().push(Instant::now());
                HttpResponse::Created().json(serde_json::json!({
                    "sid": format!("SM{}", uuid::Uuid::new_v4().simple()),
                    "status": "queued",
                }))
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", port))
    .unwrap()
    .run();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}"), created)
}

/// Sends per second of `instances` instances delivering `events` events (after a warm-up).
async fn egress_rate(
    amqp: &str,
    redis: &str,
    instances: usize,
    events: usize,
    partitions: usize,
    share: Option<f64>,
) -> f64 {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let (twilio, created) = stand_in().await;
    let mut vars = base_vars(amqp, &name);
    for (key, value) in [
        ("REDIS_URL", redis.to_owned()),
        ("REDIS_KEY_PREFIX", format!("{name}:")),
        ("EGRESS_PARTITIONS", partitions.to_string()),
        ("AMQP_PREFETCH", "16".to_owned()),
        ("TWILIO_ACCOUNT_SID", format!("AC{}", "0".repeat(32))),
        ("TWILIO_API_BASE_URL", twilio.clone()),
        ("TWILIO_CONVERSATIONS_BASE_URL", twilio.clone()),
        ("TWILIO_PHONE_NUMBER", "+15005550006".to_owned()),
        ("TWILIO_MAX_SEND_RATE", "50".to_owned()),
    ] {
        vars.insert(key.to_owned(), value);
    }
    let mut services = Vec::new();
    for index in 0..instances {
        let instance = format!("{name}-{index}");
        let cap = share.map(|share| CpuCap::new(&instance, share).expect("a cgroup"));
        services.push(Service::start_capped(&vars, &instance, cap).await);
    }
    let connection = Connection::connect(amqp, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let publish = |count: usize, offset: usize| {
        let channel = channel.clone();
        let name = name.clone();
        async move {
            // Confirms awaited together, so publishing outpaces the instances being measured.
            let mut confirms = Vec::with_capacity(count);
            for i in offset..offset + count {
                let to = format!("+1415{:07}", i % 1000);
                let from = format!("+1500{:07}", i % 200);
                let event = serde_json::json!({
                    "v": "2", "correlationId": uuid::Uuid::new_v4().to_string(),
                    "type": "chat.message.v1",
                    "ingress": {"ingressAt": "2026-01-01T00:00:00Z", "source": "bench", "connector": "twilio", "channel": to},
                    "identity": {"external": {"id": to, "platform": "twilio"}},
                    "egress": {"destination": "internal.egress.v1", "connector": "twilio", "type": "chat",
                               "channel": to, "metadata": {"twilio": {"from": from}}},
                    "routing": {"stage": "s", "slip": [], "history": []},
                    "message": {"id": format!("m{i}"), "role": "assistant", "text": format!("reply {i}")}
                });
                let confirm = channel
                    .basic_publish(
                        name.as_str().into(),
                        "internal.egress.v1".into(),
                        BasicPublishOptions::default(),
                        &serde_json::to_vec(&event).unwrap(),
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_message_id(format!("bench:{i}").into()),
                    )
                    .await
                    .unwrap();
                confirms.push(confirm);
            }
            for confirm in confirms {
                confirm.await.unwrap();
            }
        }
    };
    let wait_for = |count: usize| {
        let created = created.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            while created.lock().unwrap().len() < count && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Warm-up: every partition gets traffic, so the instances learn which they serve and
    // spread them.
    let warm_up = events / 3;
    for round in 0..3 {
        publish(warm_up / 3, round * warm_up / 3).await;
        wait_for((round + 1) * (warm_up / 3)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let before = created.lock().unwrap().len();
    publish(events, warm_up).await;
    wait_for(before + events).await;
    let times = created.lock().unwrap()[before..].to_vec();
    let rate = times.len() as f64 / (times[times.len() - 1] - times[0]).as_secs_f64();
    // How the partitions were spread: the ratio cannot beat partitions ÷ the largest share.
    let http = reqwest::Client::new();
    let mut spread = Vec::new();
    for service in &services {
        let text = http
            .get(format!("http://{}/metrics", service.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let active: f64 = text
            .lines()
            .filter(|line| line.starts_with("ingress_egress_egress_partition_active{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        spread.push((
            active as usize,
            ProcessStats::of(service.process.id()).cpu_seconds(),
        ));
    }
    let spread: Vec<String> = spread
        .iter()
        .map(|(active, cpu)| format!("{active} partitions, {cpu:.1} s CPU"))
        .collect();
    println!("  {instances} instance(s): {}", spread.join("; "));
    drop(services);
    let _ = connection.close(200, "done".into()).await;
    let mut queues: Vec<String> = (0..partitions)
        .map(|i| format!("{name}.egress.p{i}"))
        .collect();
    queues.push(format!("{name}.egress.instances"));
    cleanup(amqp, &name, &queues).await;
    support::forget_redis_keys(redis, &format!("{name}:")).await;
    rate
}

/// Deletes a run's exchange, egress queue and `extra` queues.
async fn cleanup(amqp: &str, name: &str, extra: &[String]) {
    let Ok(connection) = Connection::connect(amqp, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let egress = format!("{name}.egress");
        for queue in extra.iter().chain(std::iter::once(&egress)) {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(
                name.into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}
