//! A [`StateStore`] on Redis (`REDIS_URL`), shared by every instance, so N instances dedupe,
//! record sends, remember opt-outs and pace senders as one. Also the shared rate limit
//! ([`RateSlots`]): a GCRA in one Lua script, on Redis' clock, so reserving a slot is atomic
//! across instances and one round trip.
//!
//! One multiplexed connection ([`ConnectionManager`], which reconnects by itself) carries the
//! commands, and each HTTP worker thread has one more of its own (made on its first command
//! while Redis answers), so that a webhook's command is written and answered on the thread
//! that serves it instead of crossing to another and back. Each command is bounded by
//! [`OPERATION_TIMEOUT`], so an unreachable Redis costs a caller at most that long and never
//! hangs a webhook. Callers choose what is safe without an answer (ingress falls back to its
//! local dedupe, egress pauses). A watcher pings every [`WATCH_INTERVAL`] so `/readyz`, the
//! `redis_up` gauge and the debug snapshot follow Redis' state, and so the connection comes
//! back without waiting for traffic. TLS (`rediss://`) and AUTH (`redis://user:password@…`)
//! come from the URL; the password never appears in logs, errors or the snapshot.

use std::{
    cell::RefCell,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use ::redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    Client, Script,
};
use arc_swap::ArcSwapOption;
use futures_util::future::BoxFuture;
use prometheus::{IntCounterVec, IntGauge};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{RateSlots, StateStore, StoreError};
use crate::{
    configuration::{redact_url, scrub_url_password, RedisSettings},
    metrics::Metrics,
};

/// Longest any one command may take before the caller treats Redis as unreachable.
pub const OPERATION_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the watcher checks Redis (and connects, while it cannot).
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// GCRA: `KEYS[1]` holds the sender's theoretical arrival time (µs, Redis clock); `ARGV[1]` is
/// the interval and `ARGV[2]` the tolerance (µs). Returns the µs to wait for the reserved slot.
const GCRA: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local slot = tat - tolerance
if slot < now then slot = now end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.floor((next_tat - now) / 1000) + 1000)
return slot - now
";

/// Tells the stores of one process apart among each thread's connections (tests run many).
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's own connection to each store, on threads that run a single-threaded
    /// runtime (the HTTP workers).
    static THREAD_CONNECTIONS: RefCell<Vec<(u64, ConnectionManager)>> =
        const { RefCell::new(Vec::new()) };
}

/// Redis as the debug snapshot and `/readyz` show it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    pub up: bool,
    /// `REDIS_URL` without its password.
    pub url: String,
    pub key_prefix: String,
    /// Why it was last unreachable (password removed).
    pub last_error: Option<String>,
}

#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    client: Client,
    url: SecretString,
    prefix: String,
    connection: ArcSwapOption<ConnectionManager>,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
    up_gauge: IntGauge,
    errors: IntCounterVec,
    gcra: Script,
}

impl RedisStore {
    /// Opens the store and tries to connect once; when Redis cannot be reached yet the store
    /// starts anyway (callers see it unavailable) and [`RedisStore::watch`] keeps trying.
    pub async fn connect(settings: &RedisSettings, metrics: &Metrics) -> Result<Self, StoreError> {
        let url = settings.url.expose_secret();
        let client = Client::open(url)
            .map_err(|e| StoreError::Unavailable(scrub_url_password(&e.to_string(), url)))?;
        let store = Self {
            inner: Arc::new(Inner {
                id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
                client,
                url: settings.url.clone(),
                prefix: settings.key_prefix.clone(),
                connection: ArcSwapOption::empty(),
                up: AtomicBool::new(false),
                last_error: Mutex::new(None),
                up_gauge: metrics.register_gauge(
                    "redis_up",
                    "1 when the shared state store (Redis) answers, 0 when it is unreachable",
                ),
                errors: metrics.state_store_errors.clone(),
                gcra: Script::new(GCRA),
            }),
        };
        store.check().await;
        if !store.is_up() {
            tracing::warn!(
                url = %store.redacted_url(),
                error = store.inner.last_error.lock().expect("poisoned").as_deref().unwrap_or("-"),
                "Redis is not reachable yet; ingress dedupes locally and egress waits until it is"
            );
        }
        Ok(store)
    }

    /// Pings Redis every [`WATCH_INTERVAL`] until `shutdown`, connecting while it cannot.
    pub async fn watch(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(WATCH_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => self.check().await,
            }
        }
    }

    /// One ping (after connecting, when there is no connection yet).
    async fn check(&self) {
        let was_up = self.is_up();
        let result: Result<String, StoreError> = self
            .attempt("ping", Reach::Connecting, |mut connection| async move {
                ::redis::cmd("PING").query_async(&mut connection).await
            })
            .await;
        match (was_up, result.is_ok()) {
            (false, true) => tracing::info!(url = %self.redacted_url(), "Redis is reachable"),
            (true, false) => tracing::warn!(url = %self.redacted_url(), "Redis became unreachable"),
            _ => {}
        }
    }

    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::SeqCst)
    }

    pub fn redacted_url(&self) -> String {
        redact_url(self.inner.url.expose_secret())
    }

    pub fn status(&self) -> RedisStatus {
        RedisStatus {
            up: self.is_up(),
            url: self.redacted_url(),
            key_prefix: self.inner.prefix.clone(),
            last_error: self.inner.last_error.lock().expect("poisoned").clone(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    /// A new connection manager (connected, or the error).
    async fn connect_manager(&self) -> Result<ConnectionManager, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(OPERATION_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        ConnectionManager::new_with_config(self.inner.client.clone(), config)
            .await
            .map_err(|e| e.to_string())
    }

    /// The connection of this thread when it runs a single-threaded runtime (made on first use
    /// while Redis answers; `None` elsewhere, or when it cannot be made now: the shared one
    /// serves then).
    async fn thread_connection(&self) -> Option<ConnectionManager> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let single_threaded = Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::CurrentThread);
        if !single_threaded {
            return None;
        }
        let id = self.inner.id;
        let existing = || {
            THREAD_CONNECTIONS.with_borrow(|connections| {
                connections
                    .iter()
                    .find(|(store, _)| *store == id)
                    .map(|(_, connection)| connection.clone())
            })
        };
        if let Some(connection) = existing() {
            return Some(connection);
        }
        if !self.is_up() {
            // Not now: the shared connection answers (or fails) as fast as Redis lets it.
            return None;
        }
        let connection = self.connect_manager().await.ok()?;
        // Another command on this thread may have connected meanwhile: keep the first.
        Some(existing().unwrap_or_else(|| {
            THREAD_CONNECTIONS
                .with_borrow_mut(|connections| connections.push((id, connection.clone())));
            connection
        }))
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        if let Some(connection) = self.inner.connection.load_full() {
            return Ok((*connection).clone());
        }
        let connection = self.connect_manager().await?;
        // Another caller may have connected meanwhile: keep the first, drop ours.
        let previous = self
            .inner
            .connection
            .compare_and_swap(&None::<Arc<ConnectionManager>>, Some(Arc::new(connection)));
        Ok(match &*previous {
            Some(existing) => (**existing).clone(),
            None => (*self.inner.connection.load_full().expect("just stored")).clone(),
        })
    }

    /// Runs one command (bounded by [`OPERATION_TIMEOUT`]) and follows Redis' state from the
    /// outcome. Commands fail at once while there is no connection: only the watcher connects.
    async fn run<T, F, Fut>(&self, operation: &'static str, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = ::redis::RedisResult<T>>,
    {
        self.attempt(operation, Reach::Connected, command).await
    }

    async fn attempt<T, F, Fut>(
        &self,
        operation: &'static str,
        reach: Reach,
        command: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = ::redis::RedisResult<T>>,
    {
        let attempt = async {
            let connection = match reach {
                Reach::Connecting => self.connection().await?,
                Reach::Connected => match self.inner.connection.load_full() {
                    Some(shared) => match self.thread_connection().await {
                        Some(own) => own,
                        None => (*shared).clone(),
                    },
                    None => return Err("not connected".to_owned()),
                },
            };
            command(connection).await.map_err(|e| e.to_string())
        };
        let limit = match reach {
            Reach::Connecting => CONNECT_TIMEOUT,
            Reach::Connected => OPERATION_TIMEOUT,
        };
        let result = match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {limit:?}")),
        };
        match result {
            Ok(value) => {
                if !self.inner.up.swap(true, Ordering::SeqCst) {
                    *self.inner.last_error.lock().expect("poisoned") = None;
                }
                self.inner.up_gauge.set(1);
                Ok(value)
            }
            Err(error) => {
                let error = scrub_url_password(&error, self.inner.url.expose_secret());
                self.inner.up.store(false, Ordering::SeqCst);
                self.inner.up_gauge.set(0);
                self.inner
                    .errors
                    .with_label_values(&["redis", operation])
                    .inc();
                *self.inner.last_error.lock().expect("poisoned") = Some(error.clone());
                Err(StoreError::Unavailable(error))
            }
        }
    }
}

/// Whether a command may wait for a connection to be made.
#[derive(Clone, Copy)]
enum Reach {
    /// Only on the connection there is (callers must not wait for Redis).
    Connected,
    /// Connects first when there is none (the watcher).
    Connecting,
}

/// Redis refuses `PX 0`; an entry that expires at once is set for a millisecond.
fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

impl StateStore for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let key = self.key(key);
        Box::pin(self.run("get", move |mut connection| async move {
            ::redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await
        }))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = self.key(key);
        Box::pin(self.run("put", move |mut connection| async move {
            ::redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms(ttl))
                .query_async::<()>(&mut connection)
                .await
        }))
    }

    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let key = self.key(key);
        Box::pin(async move {
            let set: Option<String> = self
                .run("put_if_absent", move |mut connection| async move {
                    ::redis::cmd("SET")
                        .arg(&key)
                        .arg(value)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms(ttl))
                        .query_async(&mut connection)
                        .await
                })
                .await?;
            Ok(set.is_some())
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = self.key(key);
        Box::pin(self.run("remove", move |mut connection| async move {
            ::redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(&mut connection)
                .await
        }))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn is_shared(&self) -> bool {
        true
    }
}

impl RateSlots for RedisStore {
    fn reserve<'a>(
        &'a self,
        key: &'a str,
        interval: Duration,
        tolerance: Duration,
    ) -> BoxFuture<'a, Result<Duration, StoreError>> {
        let key = self.key(&format!("rate:{key}"));
        let script = &self.inner.gcra;
        Box::pin(async move {
            let wait_us: i64 = self
                .run("rate", move |mut connection| async move {
                    script
                        .key(&key)
                        .arg(interval.as_micros() as u64)
                        .arg(tolerance.as_micros() as u64)
                        .invoke_async(&mut connection)
                        .await
                })
                .await?;
            Ok(Duration::from_micros(wait_us.max(0) as u64))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Redis of the tests (`redis-server` on 127.0.0.1:6379), or `None` when none answers.
    async fn local_redis(prefix: &str) -> Option<RedisStore> {
        let settings = RedisSettings {
            url: SecretString::from("redis://127.0.0.1:6379/0"),
            key_prefix: format!("unit-{prefix}-{}:", uuid::Uuid::new_v4().simple()),
        };
        let store = RedisStore::connect(&settings, &Metrics::new()).await.ok()?;
        if store.is_up() {
            Some(store)
        } else {
            let required = std::env::var("REQUIRE_REDIS").as_deref() == Ok("1");
            assert!(!required, "REQUIRE_REDIS=1 but no Redis at 127.0.0.1:6379");
            // Past the harness's output capture (it takes only `eprint!`), so the skip is seen.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"\n!!!! Redis test SKIPPED: no Redis at 127.0.0.1:6379 (REQUIRE_REDIS=1 makes \
                  this a failure) !!!!\n",
            );
            None
        }
    }

    impl RedisStore {
        /// How many connections of its own this thread has to this store.
        fn thread_connections(&self) -> usize {
            THREAD_CONNECTIONS.with_borrow(|connections| {
                connections
                    .iter()
                    .filter(|(store, _)| *store == self.inner.id)
                    .count()
            })
        }
    }

    #[tokio::test]
    async fn a_single_threaded_runtime_gets_a_connection_of_its_own() {
        let Some(store) = local_redis("thread").await else {
            return;
        };
        assert_eq!(store.thread_connections(), 0);
        let minute = Duration::from_secs(60);
        let firsts = futures_util::future::join_all(
            (0..8).map(|i| store.put_if_absent("seen:t", "1", minute + Duration::from_millis(i))),
        )
        .await;
        assert_eq!(
            firsts
                .into_iter()
                .filter(|first| *first.as_ref().unwrap())
                .count(),
            1
        );
        assert_eq!(store.get("seen:t").await.unwrap().as_deref(), Some("1"));
        assert_eq!(store.thread_connections(), 1, "made once, then reused");

        // A multi-threaded runtime's commands go over the store's shared connection (whose
        // driver runs on this test's runtime, which must go on running meanwhile).
        let shared = store.clone();
        tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                assert_eq!(shared.get("seen:t").await.unwrap().as_deref(), Some("1"));
                assert_eq!(shared.thread_connections(), 0);
            });
        })
        .await
        .unwrap();
        store.remove("seen:t").await.unwrap();
    }

    #[tokio::test]
    async fn entries_expire_and_exactly_one_caller_sets_a_key() {
        let Some(store) = local_redis("kv").await else {
            return;
        };
        store
            .put("ledger:a", "one", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.get("ledger:a").await.unwrap().as_deref(), Some("one"));
        store.put("gone", "x", Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.get("gone").await.unwrap(), None);
        let winners = futures_util::future::join_all((0..16).map(|i| {
            let store = store.clone();
            async move {
                store
                    .put_if_absent("seen:x", &i.to_string(), Duration::from_secs(60))
                    .await
                    .unwrap()
            }
        }))
        .await;
        assert_eq!(winners.iter().filter(|w| **w).count(), 1);
        store.remove("seen:x").await.unwrap();
        assert_eq!(store.get("seen:x").await.unwrap(), None);
        assert!(store.status().up);
    }

    #[tokio::test]
    async fn reserved_slots_are_spaced_by_the_interval_across_clients() {
        let Some(first) = local_redis("rate").await else {
            return;
        };
        // A second client on the same keys, as another instance would be.
        let second = RedisStore::connect(
            &RedisSettings {
                url: SecretString::from("redis://127.0.0.1:6379/0"),
                key_prefix: first.inner.prefix.clone(),
            },
            &Metrics::new(),
        )
        .await
        .unwrap();
        let interval = Duration::from_millis(100);
        let mut waits = Vec::new();
        for i in 0..6 {
            let store = if i % 2 == 0 { &first } else { &second };
            waits.push(store.reserve("S", interval, Duration::ZERO).await.unwrap());
        }
        // Reserved back to back: each slot one interval after the previous one, whichever
        // client asked (the calls themselves take a little of each wait).
        for (i, wait) in waits.iter().enumerate() {
            let expected = interval * i as u32;
            assert!(
                *wait <= expected && *wait + Duration::from_millis(50) >= expected,
                "slot {i}: waits {wait:?}, expected about {expected:?}"
            );
        }
        let other = first.reserve("T", interval, Duration::ZERO).await.unwrap();
        assert_eq!(other, Duration::ZERO, "other senders do not wait");
    }

    #[tokio::test]
    async fn a_tls_url_builds_a_tls_client_that_fails_cleanly_on_a_non_tls_peer() {
        // A listener that is no TLS server: the client gets as far as the handshake, so its
        // TLS configuration (roots, crypto provider) is really built.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let settings = RedisSettings {
            url: SecretString::from(format!("rediss://:tls-secret-88@127.0.0.1:{port}/0")),
            key_prefix: "x:".into(),
        };
        let store = RedisStore::connect(&settings, &Metrics::new())
            .await
            .unwrap();
        assert!(!store.is_up());
        let error = store.status().last_error.unwrap_or_default();
        assert!(
            error.to_lowercase().contains("tls"),
            "a TLS handshake failed: {error}"
        );
        assert!(!error.contains("tls-secret-88"), "{error}");
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_reported_not_waited_for() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = RedisSettings {
            url: SecretString::from(format!("redis://:redis-secret-77@127.0.0.1:{port}/0")),
            key_prefix: "x:".into(),
        };
        let metrics = Metrics::new();
        let store = RedisStore::connect(&settings, &metrics).await.unwrap();
        assert!(!store.is_up());
        assert!(matches!(
            store.get("k").await,
            Err(StoreError::Unavailable(_))
        ));
        let status = serde_json::to_string(&store.status()).unwrap();
        assert!(!status.contains("redis-secret-77"), "{status}");
        assert!(metrics.render().contains("ingress_egress_redis_up 0"));
    }
}
