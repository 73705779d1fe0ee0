//! Support for the egress tests: egress event builders, a confirmed AMQP publisher for the
//! app's exchange, a fake-Twilio-backed app, and an app that can be killed without any
//! graceful shutdown (to test redelivery after a crash).

use std::{collections::BTreeMap, time::Duration};

use ingress_egress::{configuration::Settings, startup::Application};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions},
    BasicProperties, Channel, Connection, ConnectionProperties,
};
use serde_json::{json, Value};

use crate::{
    fake_twilio::FakeTwilio,
    helpers::{base_vars, fixture_tokens, spawn_app, BusTap, TestApp},
};

/// Our Twilio number in the tests.
pub const FROM: &str = "+15005550006";
/// The bot's Conversations identity in the tests.
pub const IDENTITY: &str = "bot-identity";
pub const STATUS_CALLBACK: &str = "https://ingress.example.com/webhooks/twilio/status";

/// Variables pointing the app at `fake`.
pub fn twilio_vars(fake: &FakeTwilio) -> Vec<(String, String)> {
    vec![
        ("TWILIO_API_BASE_URL".into(), fake.base_url.clone()),
        (
            "TWILIO_CONVERSATIONS_BASE_URL".into(),
            fake.base_url.clone(),
        ),
        ("TWILIO_PHONE_NUMBER".into(), FROM.into()),
        ("TWILIO_IDENTITY".into(), IDENTITY.into()),
        ("TWILIO_STATUS_CALLBACK_URL".into(), STATUS_CALLBACK.into()),
        ("TWILIO_MAX_SEND_RATE".into(), "1000".into()),
        ("TWILIO_MAX_SEND_ATTEMPTS".into(), "4".into()),
        ("TWILIO_REQUEST_TIMEOUT_MS".into(), "10000".into()),
        // Tests that exercise the status-callback path set their own wait.
        ("TWILIO_RESOLVE_WAIT_MS".into(), "300".into()),
        (
            "LOG_LEVEL".into(),
            "warn,ingress_egress::egress=info".into(),
        ),
    ]
}

/// A fake Twilio accepting the fixture account's credentials.
pub async fn fake_twilio() -> FakeTwilio {
    let tokens = fixture_tokens();
    FakeTwilio::start(&tokens.account_sid, &tokens.primary_auth_token).await
}

/// The app (with the egress consumer) wired to `fake`, plus `extra` variables.
pub async fn egress_app(amqp_url: &str, fake: &FakeTwilio, extra: &[(&str, &str)]) -> TestApp {
    let mut vars = twilio_vars(fake);
    for (k, v) in extra {
        vars.retain(|(key, _)| key != k);
        vars.push(((*k).to_owned(), (*v).to_owned()));
    }
    let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_app(Some(amqp_url), &borrowed).await
}

/// An egress event replying `text` to `channel`.
pub fn reply_to(channel: &str, text: &str) -> Value {
    json!({
        "v": "2",
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "type": "chat.message.v1",
        "ingress": {"ingressAt": "2026-01-01T00:00:00Z", "source": "ingress.twilio", "connector": "twilio", "channel": channel},
        "identity": {"external": {"id": channel, "platform": "twilio"}},
        "egress": {"destination": "internal.egress.v1", "connector": "twilio", "type": "chat", "channel": channel,
                   "metadata": {"twilio": {"from": FROM}}},
        "routing": {"stage": "responded", "slip": [], "history": []},
        "message": {"id": "bot-1", "role": "assistant", "text": text}
    })
}

/// Publishes to the app's exchange with confirms.
pub struct EgressPublisher {
    _connection: Connection,
    channel: Channel,
    exchange: String,
    prefix: String,
}

impl EgressPublisher {
    pub async fn new(app: &TestApp) -> Self {
        let url = app.amqp_url.as_deref().expect("needs a broker");
        Self::connect(url, &app.exchange, &app.settings.bus.prefix).await
    }

    pub async fn connect(url: &str, exchange: &str, prefix: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("publisher connects");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Self {
            _connection: connection,
            channel,
            exchange: exchange.to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    /// Publishes raw bytes on `BUS_PREFIX + topic` with `message_id`.
    pub async fn publish_raw(&self, topic: &str, body: &[u8], message_id: Option<&str>) {
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(chrono::Utc::now().timestamp() as u64);
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                format!("{}{topic}", self.prefix).as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("published")
            .await
            .expect("confirmed");
        assert!(confirm.is_ack(), "broker refused the test event");
    }

    /// Publishes an egress event on `internal.egress.v1` with a fresh message id.
    pub async fn publish(&self, event: &Value) -> String {
        let id = format!("test:{}", uuid::Uuid::new_v4());
        self.publish_raw(
            "internal.egress.v1",
            &serde_json::to_vec(event).unwrap(),
            Some(&id),
        )
        .await;
        id
    }
}

/// The next JSON message on `tap` (panics after 20 s).
pub async fn next_json(tap: &mut BusTap) -> Value {
    let delivery = tap
        .next(Duration::from_secs(20))
        .await
        .expect("a message within 20 s");
    serde_json::from_slice(&delivery.data).expect("JSON body")
}

/// Messages on `tap` until one matches `pred` (panics after 20 s).
pub async fn next_matching(tap: &mut BusTap, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let delivery = tap
            .next(left)
            .await
            .expect("a matching message within 20 s");
        let json: Value = serde_json::from_slice(&delivery.data).expect("JSON body");
        if pred(&json) {
            return json;
        }
    }
}

/// Deletes a test's durable egress queue (quorum queues are not auto-deleted).
/// Declares a durable `queue` of `queue_type` (`quorum` or `classic`) as another deployment
/// (or an older configuration) would have left it.
pub async fn declare_queue_of_type(amqp_url: &str, queue: &str, queue_type: &str) {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString(queue_type.into()),
    );
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
}

pub async fn delete_queue(amqp_url: &str, queue: &str) {
    if let Ok(connection) = Connection::connect(amqp_url, ConnectionProperties::default()).await {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "cleanup".into()).await;
    }
}

/// The application on its own runtime and thread, so [`KillableApp::kill`] can stop it dead:
/// every task is dropped mid-flight, nothing is acked or nacked, the broker connection breaks.
pub struct KillableApp {
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KillableApp {
    pub async fn spawn(amqp_url: &str, vars: BTreeMap<String, String>) -> Self {
        let settings = Settings::from_vars(vars).expect("settings");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let port = runtime.block_on(async {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let app = Application::build_with_listener(settings, listener)
                    .await
                    .expect("builds");
                let port = app.port();
                tokio::spawn(async move {
                    let _ = app.run_until_stopped().await;
                });
                port
            });
            let _ = ready_tx.send(port);
            let _ = kill_rx.recv();
            runtime.shutdown_timeout(Duration::from_millis(100));
        });
        let port = ready_rx.await.expect("app started");
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let ready = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not ready in 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = amqp_url;
        Self {
            kill: Some(kill_tx),
            thread: Some(thread),
        }
    }

    /// Stops the app dead (no graceful shutdown).
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for KillableApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `base_vars` plus the fake's variables, with a fresh outbox directory.
pub fn killable_vars(
    amqp_url: &str,
    fake: &FakeTwilio,
    outbox: &std::path::Path,
) -> BTreeMap<String, String> {
    let mut vars = base_vars(Some(amqp_url));
    for (k, v) in twilio_vars(fake) {
        vars.insert(k, v);
    }
    vars.insert("OUTBOX_DIR".into(), outbox.display().to_string());
    vars
}
