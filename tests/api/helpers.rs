//! Test harness: spawns the real application on a random port against a real RabbitMQ, taps
//! the exchange with a private queue, loads the signed Twilio fixtures, and makes tests skipped
//! for want of a broker visible in the run's output. Every app's spans are traced as the service
//! traces them and can be read back through [`spans`].

use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    sync::{Mutex, Once, OnceLock, PoisonError},
    time::Duration,
};

use ingress_egress::{
    configuration::Settings,
    startup::{Application, ConnectorFactory},
    telemetry,
};
use lapin::{message::Delivery, Connection, ConnectionProperties};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::Deserialize;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker URL tests use, or `None` when no broker answers: the test then passes without
/// running, and [`report_skip`] makes that visible. With `REQUIRE_AMQP=1` a missing broker
/// fails the test instead.
pub async fn broker_url() -> Option<String> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned());
    let reachable = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await;
    match reachable {
        Ok(Ok(connection)) => {
            let _ = connection.close(200, "probe".into()).await;
            Some(url)
        }
        other => {
            let reason = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            if std::env::var("REQUIRE_AMQP").as_deref() == Ok("1") {
                panic!("REQUIRE_AMQP=1 but RabbitMQ is not reachable at {url}: {reason}");
            }
            report_skip(
                "RabbitMQ",
                &format!(
                    "RabbitMQ is not reachable at {} ({reason})",
                    ingress_egress::configuration::redact_url(&url)
                ),
            );
            None
        }
    }
}

/// How many tests skipped in this run, by what they needed (`RabbitMQ`, `Redis`, …).
static SKIPPED: Mutex<BTreeMap<&'static str, usize>> = Mutex::new(BTreeMap::new());

/// Says, past the test harness's output capture, that a test is skipped because `need` (e.g.
/// `RabbitMQ`) is missing (`why`: one line, no secret): a notice at the first skip for each
/// need and, when the test binary exits, how many were skipped (the harness reports them as
/// passed, so its summary alone would hide them).
pub fn report_skip(need: &'static str, why: &str) {
    let first_of_need = {
        let mut skipped = SKIPPED.lock().unwrap_or_else(PoisonError::into_inner);
        let count = skipped.entry(need).or_default();
        *count += 1;
        *count == 1
    };
    if first_of_need {
        // Written to the stream itself: the harness captures only `print!`/`eprint!`.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!! {why}: tests that need {need} are SKIPPED and reported as passed. Start it \
             (see the README) or set REQUIRE_AMQP=1 to make this a failure. !!!!\n"
        );
    }
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        extern "C" fn summary() {
            let skipped = SKIPPED.lock().unwrap_or_else(PoisonError::into_inner);
            let total: usize = skipped.values().sum();
            let needs: Vec<String> = skipped
                .iter()
                .map(|(need, count)| format!("{need}: {count}"))
                .collect();
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!! {total} test{} SKIPPED for want of {}, so \"test result: ok\" above does \
                 not cover {}. !!!!",
                if total == 1 { " was" } else { "s were" },
                needs.join(", "),
                if total == 1 { "it" } else { "them" }
            );
        }
        // SAFETY: `atexit` only records the function; `summary` reads a mutex and writes to
        // stderr.
        unsafe {
            libc::atexit(summary);
        }
    });
}

/// Returns from the test early (reported by [`report_skip`]) when no broker is available.
#[macro_export]
macro_rules! require_broker {
    () => {
        match $crate::helpers::broker_url().await {
            Some(url) => url,
            None => return,
        }
    };
}

pub struct TestApp {
    pub address: String,
    pub exchange: String,
    pub egress_queue: String,
    pub amqp_url: Option<String>,
    pub settings: Settings,
    pub outbox_dir: PathBuf,
    pub client: reqwest::Client,
    _outbox_guard: Option<tempfile::TempDir>,
    server: tokio::task::JoinHandle<()>,
    server_handle: actix_web::dev::ServerHandle,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop the background tasks first, so the egress consumer does not re-create the queue
        // deleted below (a test may go on after dropping one app).
        self.shutdown.cancel();
        self.server.abort();
        // Remove this test's durable exchange and egress queue so the broker does not fill up
        // with them.
        if let Some(url) = &self.amqp_url {
            delete_broker_objects(url, &self.exchange, &self.egress_queue);
        }
    }
}

/// Deletes `queue` and `exchange` from the broker at `url` (best effort). Runs on a thread of
/// its own, so it works from `Drop` and from inside a test's runtime alike.
/// A queue's counters (ready messages, consumers), read with a passive declare.
pub async fn inspect_queue(url: &str, queue: &str) -> lapin::Queue {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    queue
}

pub fn delete_broker_objects(url: &str, exchange: &str, queue: &str) {
    let (url, exchange, queue) = (url.to_owned(), exchange.to_owned(), queue.to_owned());
    let _ = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let cleanup = async {
                let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                channel
                    .queue_delete(
                        queue.as_str().into(),
                        lapin::options::QueueDeleteOptions::default(),
                    )
                    .await?;
                channel
                    .exchange_delete(
                        exchange.as_str().into(),
                        lapin::options::ExchangeDeleteOptions::default(),
                    )
                    .await?;
                let _ = channel.close(200, "test cleanup".into()).await;
                connection.close(200, "test cleanup".into()).await
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), cleanup).await;
        });
    })
    .join();
}

/// Variables every test app gets: fixture credentials, a private exchange and queue, a fresh
/// outbox. `overrides` win; an override with an empty value removes the variable.
pub fn base_vars(amqp_url: Option<&str>) -> BTreeMap<String, String> {
    let tokens = fixture_tokens();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut vars = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        vars.insert(k.to_owned(), v.to_owned());
    };
    set("PORT", "0");
    set("APP_ENV", "development");
    set("LOG_LEVEL", "warn");
    set("LOG_FORMAT", "pretty");
    set("PUBLIC_BASE_URL", &tokens.public_base_url);
    set("AMQP_EXCHANGE", &format!("test-{id}"));
    set("AMQP_EGRESS_QUEUE", &format!("test-{id}.egress"));
    // Classic queues are cheap to create and delete by the hundred; the quorum default has
    // its own test (egress::the_egress_queue_is_a_quorum_queue_by_default).
    set("AMQP_EGRESS_QUEUE_TYPE", "classic");
    set("INSTANCE_ID", &format!("test-{id}"));
    set("TWILIO_ACCOUNT_SID", &tokens.account_sid);
    set("TWILIO_AUTH_TOKEN", &tokens.primary_auth_token);
    set("TWILIO_SECONDARY_AUTH_TOKEN", &tokens.secondary_auth_token);
    set("PUBLISH_CONFIRM_TIMEOUT_MS", "3000");
    if let Some(url) = amqp_url {
        set("AMQP_URL", url);
    }
    vars
}

/// Spawns the application with `base_vars` plus `overrides`; with a broker, waits until ready.
pub async fn spawn_app(amqp_url: Option<&str>, overrides: &[(&str, &str)]) -> TestApp {
    let app = spawn_app_not_ready(amqp_url, overrides).await;
    if app.amqp_url.is_some() {
        app.wait_ready(Duration::from_secs(15)).await;
    }
    app
}

/// Spawns the application without waiting for the broker.
pub async fn spawn_app_not_ready(amqp_url: Option<&str>, overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_with_connectors(amqp_url, overrides, Vec::new()).await
}

/// The spans every test app has finished, exported in process by OpenTelemetry's in-memory
/// exporter through the service's own [`telemetry::span_layer`] (installed once, as the
/// process's tracing subscriber, before the first app starts). Apps of concurrent tests share
/// it: tell their spans apart by trace id.
pub fn spans() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    let (exporter, _provider) = EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        tracing_subscriber::registry()
            .with(telemetry::span_layer(&provider))
            .try_init()
            .expect("no other tracing subscriber is installed in the tests");
        (exporter, provider)
    });
    exporter
}

/// Spawns the application serving `extra` connectors beside the registered ones, without
/// waiting for the broker.
pub async fn spawn_app_with_connectors(
    amqp_url: Option<&str>,
    overrides: &[(&str, &str)],
    extra: Vec<ConnectorFactory>,
) -> TestApp {
    spans();
    let mut vars = base_vars(amqp_url);
    let outbox_guard = if overrides.iter().any(|(k, _)| *k == "OUTBOX_DIR") {
        None
    } else {
        let dir = tempfile::tempdir().expect("temp dir");
        vars.insert("OUTBOX_DIR".into(), dir.path().display().to_string());
        Some(dir)
    };
    for (key, value) in overrides {
        if value.is_empty() {
            vars.remove(*key);
        } else {
            vars.insert((*key).to_owned(), (*value).to_owned());
        }
    }
    let settings = Settings::from_vars(vars).expect("test settings are valid");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let application = Application::build_with_connectors(settings.clone(), listener, extra)
        .await
        .expect("application builds");
    let port = application.port();
    let shutdown = application.shutdown_token();
    let server_handle = application.server_handle();
    let server = tokio::spawn(async move {
        let _ = application.run_until_stopped().await;
    });
    let app = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        exchange: settings.bus.exchange.clone(),
        egress_queue: settings.bus.egress_queue.clone(),
        amqp_url: amqp_url.map(str::to_owned),
        outbox_dir: settings.outbox_dir.clone(),
        settings,
        client: reqwest::Client::new(),
        _outbox_guard: outbox_guard,
        server,
        server_handle,
        shutdown,
    };
    app
}

impl TestApp {
    /// Stops the app as SIGTERM would and waits until its background work has finished;
    /// its broker objects stay (they go when the app is dropped), so another app can take
    /// over its exchange, queue and outbox.
    pub async fn stop(&mut self) {
        self.server_handle.stop(true).await;
        tokio::time::timeout(Duration::from_secs(20), &mut self.server)
            .await
            .expect("the app stops within 20 s")
            .expect("the app's task ends cleanly");
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(response) = self
                .client
                .get(format!("{}/readyz", self.address))
                .send()
                .await
            {
                if response.status() == 200 {
                    return;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!("application not ready within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The OpenAPI document the service serves.
    pub async fn openapi_document(&self) -> serde_json::Value {
        self.get("/api-docs/openapi.json")
            .await
            .json()
            .await
            .expect("the OpenAPI document is JSON")
    }

    /// Sends a fixture exactly as Twilio sent it: its method (POST, or GET for a webhook
    /// configured with GET), path and query, headers and body.
    pub async fn post_fixture(&self, fixture: &Fixture) -> reqwest::Response {
        let method =
            reqwest::Method::from_bytes(fixture.method.as_bytes()).expect("an HTTP method");
        let mut request = self
            .client
            .request(
                method,
                format!("{}{}", self.address, fixture.path_and_query),
            )
            .header("X-Twilio-Signature", &fixture.signature);
        if !fixture.content_type.is_empty() {
            request = request.header("Content-Type", &fixture.content_type);
        }
        if !fixture.body.is_empty() {
            request = request.body(fixture.body.clone());
        }
        request.send().await.expect("request sent")
    }

    /// POSTs form `params` to `path_and_query`, signed with the fixtures' primary auth token
    /// over `PUBLIC_BASE_URL + path_and_query`, exactly as Twilio signs a webhook.
    pub async fn post_signed_form(
        &self,
        path_and_query: &str,
        params: &[(&str, &str)],
    ) -> reqwest::Response {
        let tokens = fixture_tokens();
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let signature = ingress_egress::connectors::twilio::ingress::signature::compute_signature(
            &tokens.primary_auth_token,
            &format!("{}{path_and_query}", tokens.public_base_url),
            &params,
        );
        self.client
            .post(format!("{}{path_and_query}", self.address))
            .header("X-Twilio-Signature", signature)
            .form(&params)
            .send()
            .await
            .expect("webhook request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent")
    }

    /// A private queue bound to `BUS_PREFIX` + `topic` on this app's exchange.
    pub async fn tap(&self, topic: &str) -> BusTap {
        let url = self.amqp_url.as_deref().expect("tap needs a broker");
        BusTap::bind(
            url,
            &self.exchange,
            &format!("{}{topic}", self.settings.bus.prefix),
        )
        .await
    }
}

/// An exclusive, auto-deleted queue bound to one routing key, to observe what is published.
pub struct BusTap(ingress_egress::bus::amqp::tap::Tap);

impl BusTap {
    pub async fn bind(amqp_url: &str, exchange: &str, routing_key: &str) -> Self {
        Self(
            ingress_egress::bus::amqp::tap::Tap::bind(amqp_url, exchange, routing_key)
                .await
                .expect("tap bound"),
        )
    }

    /// The next message, or `None` after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Delivery> {
        self.0.next(wait).await
    }

    /// The next message's body as JSON; panics when none arrives within 10 s.
    pub async fn next_json(&mut self) -> (Delivery, serde_json::Value) {
        let delivery = self
            .next(Duration::from_secs(10))
            .await
            .expect("a message within 10 s");
        let json = serde_json::from_slice(&delivery.data).expect("JSON body");
        (delivery, json)
    }

    /// Every message that arrives until none has come for `quiet`.
    pub async fn collect_until_quiet(&mut self, quiet: Duration) -> Vec<Delivery> {
        let mut all = Vec::new();
        while let Some(delivery) = self.next(quiet).await {
            all.push(delivery);
        }
        all
    }
}

/// A string header of an AMQP message.
pub fn header(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Fixture {
    pub name: String,
    /// `POST`, or `GET` for a webhook configured with GET (its parameters are in the query).
    pub method: String,
    pub signed_url: String,
    pub public_base_url: String,
    pub path_and_query: String,
    pub content_type: String,
    pub body: String,
    /// Decoded form pairs: of the body, or of the query for a GET form webhook.
    pub params: Vec<(String, String)>,
    pub signature: String,
    pub signed_with: String,
    pub expect_valid: bool,
}

impl Fixture {
    /// A webhook configured with GET whose parameters travel in the query string (signed as
    /// part of the URL, with no body parameters).
    pub fn is_get_form(&self) -> bool {
        self.method == "GET" && self.content_type != "application/json"
    }

    /// The first value of the form parameter `name` (panics when the fixture has none).
    pub fn param(&self, name: &str) -> String {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("fixture {} has no {name}", self.name))
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct FixtureTokens {
    pub account_sid: String,
    pub primary_auth_token: String,
    pub secondary_auth_token: String,
    pub other_auth_token: String,
    pub public_base_url: String,
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/twilio")
}

pub fn fixture_tokens() -> FixtureTokens {
    let text = std::fs::read_to_string(fixtures_dir().join("tokens.json")).expect("tokens.json");
    serde_json::from_str(&text).expect("tokens.json parses")
}

pub fn fixture(name: &str) -> Fixture {
    let path = fixtures_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("fixture {name}"));
    serde_json::from_str(&text).expect("fixture parses")
}

/// Files in `fixtures/twilio/` that are not signed webhook requests.
const NOT_WEBHOOK_FIXTURES: &[&str] = &["tokens.json", "access_token.json"];

/// Every webhook fixture, sorted by name.
pub fn all_fixtures() -> Vec<Fixture> {
    let mut fixtures: Vec<Fixture> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !NOT_WEBHOOK_FIXTURES.iter().any(|name| p.ends_with(name))
        })
        .map(|p| serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap())
        .collect();
    fixtures.sort_by(|a, b| a.name.cmp(&b.name));
    fixtures
}
