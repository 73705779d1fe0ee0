//! Support for the multi-instance tests: several processes of the real binary
//! (`CARGO_BIN_EXE_ingress-egress`) sharing one exchange, one egress queue (with its
//! partitions) and one Redis key prefix, each with its own port, instance id and outbox; a
//! private `redis-server` the test can stop and start; and cleanup of what they declared.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

use crate::{
    egress_support::twilio_vars,
    fake_twilio::FakeTwilio,
    helpers::{base_vars, delete_broker_objects},
};

pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// Whether a Redis answers `PING` on `port` (`-NOAUTH` from one that wants a password counts).
pub async fn redis_answers(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut answer = [0u8; 5];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(&answer == b"+PONG" || &answer == b"-NOAU")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

/// The Redis of the tests, or `None` (reported by `report_skip`) when none answers on 6379. With
/// `REQUIRE_REDIS=1` or `REQUIRE_AMQP=1` (CI) a missing Redis fails the test instead.
pub async fn redis_url() -> Option<String> {
    if redis_answers(6379).await {
        return Some(REDIS_URL.to_owned());
    }
    let required = ["REQUIRE_REDIS", "REQUIRE_AMQP"]
        .iter()
        .any(|name| std::env::var(name).as_deref() == Ok("1"));
    assert!(
        !required,
        "Redis is required but not answering at {REDIS_URL}"
    );
    crate::helpers::report_skip("Redis", &format!("no Redis answers at {REDIS_URL}"));
    None
}

/// Returns from the test early (after a loud notice) when no Redis is available.
#[macro_export]
macro_rules! require_redis {
    () => {
        match $crate::replicas::redis_url().await {
            Some(url) => url,
            None => return,
        }
    };
}

/// A `redis-server` of the test's own, on a free port, with a password (AUTH through the URL)
/// and keeping nothing on disk: stopping and starting it loses every key, as a restarted Redis
/// without persistence does.
pub struct PrivateRedis {
    pub port: u16,
    pub password: String,
    dir: tempfile::TempDir,
    process: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = free_port();
        let mut redis = Self {
            port,
            password: format!("redis-pass-{}", uuid::Uuid::new_v4().simple()),
            dir: tempfile::tempdir().unwrap(),
            process: None,
        };
        redis.resume().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    /// Starts (again) on the same port.
    pub async fn resume(&mut self) {
        let process = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", &self.password])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (install the Debian package redis-server)");
        self.process = Some(process);
        for _ in 0..100 {
            if redis_answers(self.port).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private redis-server did not answer on {}", self.port);
    }

    /// Stops it dead (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[path = "../support/mod.rs"]
mod shared;
use shared::forget_redis_keys;
pub use shared::free_port;

/// One running process of the service.
pub struct Replica {
    pub instance_id: String,
    pub address: String,
    process: Option<Child>,
    log: PathBuf,
    _outbox: tempfile::TempDir,
}

impl Replica {
    /// SIGKILL: no shutdown hook runs, nothing is acked or nacked.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// SIGTERM, as Cloud Run stops an instance, and waits for the process to exit.
    pub fn terminate(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &process.id().to_string()])
                .status();
            let _ = process.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// The value of one metric series, e.g. `ingress_egress_redis_up`, or 0 when absent.
    pub async fn metric(&self, client: &reqwest::Client, series: &str) -> f64 {
        let text = client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|line| line.starts_with(series))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `GET /_debug/twilio`.
    pub async fn snapshot(&self, client: &reqwest::Client) -> Value {
        client
            .get(format!("{}/_debug/twilio", self.address))
            .send()
            .await
            .expect("snapshot answers")
            .json()
            .await
            .unwrap()
    }

    /// The egress partitions this instance actively consumes.
    pub async fn active_partitions(&self, client: &reqwest::Client) -> Vec<u64> {
        self.snapshot(client).await["egressPartitions"]["active"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    }

    /// The last lines of the process's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // Routine sends would hide what matters.
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.contains("egress event sent"))
            .collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Several replicas sharing one exchange, egress queue and Redis key prefix.
pub struct Cluster {
    pub replicas: Vec<Replica>,
    pub vars: BTreeMap<String, String>,
    pub amqp_url: String,
    pub exchange: String,
    pub queue: String,
    partitions: u16,
    pub client: reqwest::Client,
}

impl Cluster {
    /// `count` replicas with `EGRESS_PARTITIONS=partitions`, Twilio at `fake`, sharing
    /// `redis_url` under a prefix of their own; `extra` variables win.
    pub async fn start(
        amqp_url: &str,
        redis_url: &str,
        fake: &FakeTwilio,
        count: usize,
        partitions: u16,
        extra: &[(&str, &str)],
    ) -> Cluster {
        let mut vars = base_vars(Some(amqp_url));
        vars.extend(twilio_vars(fake));
        let id = vars["INSTANCE_ID"].clone();
        for (key, value) in [
            ("REDIS_URL", redis_url.to_owned()),
            ("REDIS_KEY_PREFIX", format!("{id}:")),
            ("EGRESS_PARTITIONS", partitions.to_string()),
            ("AMQP_EGRESS_QUEUE_TYPE", "quorum".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
        ] {
            vars.insert(key.to_owned(), value);
        }
        for (key, value) in extra {
            vars.insert((*key).to_owned(), (*value).to_owned());
        }
        let mut cluster = Cluster {
            replicas: Vec::new(),
            exchange: vars["AMQP_EXCHANGE"].clone(),
            queue: vars["AMQP_EGRESS_QUEUE"].clone(),
            vars,
            amqp_url: amqp_url.to_owned(),
            partitions,
            // Idle connections are dropped well before the service's 5 s keep-alive closes
            // them, so a request never goes out on a connection the server is closing.
            client: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(1))
                .build()
                .unwrap(),
        };
        for index in 0..count {
            let replica = cluster.spawn(index);
            cluster.replicas.push(replica);
        }
        for replica in &cluster.replicas {
            cluster.wait_ready(replica).await;
        }
        cluster
    }

    /// Starts replica `index` (its own port, instance id and outbox).
    pub fn spawn(&self, index: usize) -> Replica {
        let outbox = tempfile::tempdir().unwrap();
        let port = free_port();
        let instance_id = format!("{}-r{index}", self.vars["INSTANCE_ID"]);
        let log = outbox.path().join("service.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let process = Command::new(env!("CARGO_BIN_EXE_ingress-egress"))
            .env_clear()
            // Away from the repository, whose .env the binary would read.
            .current_dir(outbox.path())
            .envs(&self.vars)
            .env("PORT", port.to_string())
            .env("INSTANCE_ID", &instance_id)
            .env("OUTBOX_DIR", outbox.path().join("outbox"))
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("the service binary starts");
        Replica {
            instance_id,
            address: format!("http://127.0.0.1:{port}"),
            process: Some(process),
            log,
            _outbox: outbox,
        }
    }

    /// Waits until `replica` answers `/readyz` with 200.
    pub async fn wait_ready(&self, replica: &Replica) {
        for _ in 0..300 {
            let ready = self
                .client
                .get(format!("{}/readyz", replica.address))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "replica {} not ready in 15 s:\n{}",
            replica.instance_id,
            replica.log_tail()
        );
    }

    /// Every replica's log tail, for failure messages.
    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("--- {} ---\n{}", r.instance_id, r.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            replica.kill();
        }
        let (url, exchange, queue) = (
            self.amqp_url.clone(),
            self.exchange.clone(),
            self.queue.clone(),
        );
        let partitions: Vec<String> = (0..self.partitions)
            .map(|i| format!("{queue}.p{i}"))
            .chain(std::iter::once(format!("{queue}.instances")))
            .collect();
        let redis = (
            self.vars.get("REDIS_URL").cloned(),
            self.vars.get("REDIS_KEY_PREFIX").cloned(),
        );
        let _ = std::thread::spawn(move || {
            delete_broker_objects(&url, &exchange, &queue);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let cleanup = async {
                    let connection =
                        Connection::connect(&url, ConnectionProperties::default()).await?;
                    let channel = connection.create_channel().await?;
                    for queue in &partitions {
                        channel
                            .queue_delete(
                                queue.as_str().into(),
                                lapin::options::QueueDeleteOptions::default(),
                            )
                            .await?;
                    }
                    connection.close(200, "test cleanup".into()).await
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), cleanup).await;
                if let (Some(url), Some(prefix)) = redis {
                    let forget = forget_redis_keys(&url, &prefix);
                    let _ = tokio::time::timeout(Duration::from_secs(10), forget).await;
                }
            });
        })
        .join();
    }
}
