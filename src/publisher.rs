//! Publishing with the delivery guarantees of the design: confirmed publish, falling back to the
//! durable outbox when the broker is away or slow, and a dedupe window (`DEDUPE_TTL_SECONDS`,
//! 24 h by default) over message ids, so a provider's retry, or a captured request replayed
//! within the window, is not published again. Every connector publishes through
//! [`EventPublisher`].
//!
//! With a shared window (Redis) the check is one atomic set-if-absent, so a retry reaching
//! another instance is caught too. When the shared window cannot answer, an accepted webhook is
//! never refused for it: the local window ([`EventPublisher::with_local_dedupe`]) decides, and
//! what it lets through is marked as possibly duplicated. Those ids are written to the shared
//! window once it answers again (in the background), so a retry reaching another instance
//! later is still caught.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    backoff::Backoff,
    bus::{Bus, BusMessage, PublishError},
    metrics::Metrics,
    outbox::{Outbox, OutboxError},
    state::StateStore,
    telemetry::trace_context::current_traceparent,
};

/// How many ids accepted without the shared dedupe window are kept to write to it later.
const MAX_UNSHARED: usize = 100_000;

/// The response header with which webhooks say what became of the event they carried: a
/// [`Delivery`] name, or `ignored` when there was nothing to publish. Providers ignore it; a
/// sender that wants to know (`simulate`, an operator with curl) reads it.
pub const DELIVERY_HEADER: &str = "X-Ingress-Delivery";

/// What happened to a message handed to [`EventPublisher`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The broker confirmed it.
    Published,
    /// It is safely in the durable outbox and will be published when the broker is back.
    Outboxed,
    /// The same `message_id` was accepted moments ago; not published again.
    Duplicate,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Published => "published",
            Delivery::Outboxed => "outboxed",
            Delivery::Duplicate => "duplicate",
        }
    }
}

/// Time kept before a caller's deadline for writing the outbox when the broker's confirm did not
/// come: an fsynced write of one small file.
const OUTBOX_RESERVE: Duration = Duration::from_millis(500);

/// Neither the broker nor the outbox took the message: the caller must not acknowledge it.
#[derive(Debug, thiserror::Error)]
#[error("event could not be published ({publish}) nor stored ({store})")]
pub struct PublishFailed {
    pub publish: PublishError,
    pub store: OutboxError,
}

/// When the broker last confirmed and last let a confirm time out.
#[derive(Default)]
struct ConfirmRecord {
    last_confirmed: Option<Instant>,
    last_timed_out: Option<Instant>,
}

/// A confirm timeout this recent, with no confirm since, means the broker is stalled (the
/// connection is up but publishes go nowhere): not ready.
const STALL_WINDOW: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct EventPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    outbox: Outbox,
    /// Message ids accepted within the dedupe window.
    seen: Arc<dyn StateStore>,
    /// This process's own window, consulted when `seen` (shared) cannot answer.
    local_seen: Option<Arc<dyn StateStore>>,
    /// Ids accepted while `seen` could not answer, with when their window ends: written to
    /// `seen` once it answers again. At most [`MAX_UNSHARED`].
    unshared: std::sync::Mutex<Vec<(String, tokio::time::Instant)>>,
    dedupe_window: Duration,
    confirm_timeout: Duration,
    confirms: Mutex<ConfirmRecord>,
    metrics: Metrics,
}

impl EventPublisher {
    pub fn new(
        bus: Bus,
        outbox: Outbox,
        seen: Arc<dyn StateStore>,
        dedupe_window: Duration,
        confirm_timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        metrics.outbox_depth.set(outbox.depth() as i64);
        Self {
            inner: Arc::new(Inner {
                bus,
                outbox,
                seen,
                local_seen: None,
                unshared: std::sync::Mutex::default(),
                dedupe_window,
                confirm_timeout,
                confirms: Mutex::default(),
                metrics,
            }),
        }
    }

    /// Keeps a local dedupe window beside the shared one, for when the shared one cannot
    /// answer. Must be called before the publisher is shared.
    pub fn with_local_dedupe(mut self, local: Arc<dyn StateStore>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_local_dedupe is called before the publisher is shared")
            .local_seen = Some(local);
        self
    }

    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// The broker let a confirm time out recently and has confirmed nothing since: the
    /// connection may look up, but what is published goes to the outbox.
    pub fn confirms_stalled(&self) -> bool {
        let record = self.inner.confirms.lock().expect("poisoned");
        match record.last_timed_out {
            Some(timed_out) if timed_out.elapsed() < STALL_WINDOW => record
                .last_confirmed
                .is_none_or(|confirmed| confirmed < timed_out),
            _ => false,
        }
    }

    /// Publishes unless the same `message_id` was accepted within the dedupe window. When the
    /// shared window cannot be consulted the local one decides, and the message goes out marked
    /// as possibly duplicated (consumers dedupe on the stable `message_id`): an accepted webhook
    /// is never refused for want of the window.
    pub async fn publish_once(&self, message: BusMessage) -> Result<Delivery, PublishFailed> {
        self.publish_once_waiting(message, self.inner.confirm_timeout)
            .await
    }

    /// [`Self::publish_once`] for a caller that must be done by `deadline` (a webhook whose
    /// sender gives up after a fixed time): the confirm wait is cut short so that the outbox
    /// fallback still fits before it, and once the deadline is too near the message goes
    /// straight to the outbox.
    pub async fn publish_once_by(
        &self,
        message: BusMessage,
        deadline: Instant,
    ) -> Result<Delivery, PublishFailed> {
        let wait = self.inner.confirm_timeout.min(
            deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(OUTBOX_RESERVE),
        );
        self.publish_once_waiting(message, wait).await
    }

    async fn publish_once_waiting(
        &self,
        mut message: BusMessage,
        confirm_wait: Duration,
    ) -> Result<Delivery, PublishFailed> {
        let inner = &self.inner;
        let key = format!("seen:{}", message.message_id);
        let window = inner.dedupe_window;
        let first = match inner.seen.put_if_absent(&key, "1", window).await {
            Ok(first) => {
                if let Some(local) = &inner.local_seen {
                    // Known locally too, should the shared window go away.
                    let _ = local.put(&key, "1", window).await;
                }
                self.share_unshared();
                first
            }
            Err(error) => {
                tracing::warn!(%error, "shared dedupe window unavailable; deduplicating locally and marking the event as a possible duplicate");
                inner.metrics.dedupe_fallbacks.inc();
                message.possible_duplicate = true;
                let first = match &inner.local_seen {
                    Some(local) => local.put_if_absent(&key, "1", window).await.unwrap_or(true),
                    None => true,
                };
                if first {
                    let mut unshared = inner.unshared.lock().expect("poisoned");
                    if unshared.len() < MAX_UNSHARED {
                        unshared.push((key.clone(), tokio::time::Instant::now() + window));
                    }
                }
                first
            }
        };
        if !first {
            return Ok(Delivery::Duplicate);
        }
        let result = self.publish_waiting(message, confirm_wait).await;
        if result.is_err() {
            // Not accepted: let the provider's retry through.
            for store in std::iter::once(&inner.seen).chain(inner.local_seen.as_ref()) {
                if let Err(error) = store.remove(&key).await {
                    tracing::warn!(%error, "dedupe mark of a refused event not removed");
                }
            }
        }
        result
    }

    /// Writes the ids accepted while the shared window was away into it, in the background.
    fn share_unshared(&self) {
        let pending = std::mem::take(&mut *self.inner.unshared.lock().expect("poisoned"));
        if pending.is_empty() {
            return;
        }
        let publisher = self.clone();
        tokio::spawn(async move {
            let seen = &publisher.inner.seen;
            let count = pending.len();
            let mut pending = pending.into_iter();
            while let Some((key, until)) = pending.next() {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                if !left.is_zero() && seen.put_if_absent(&key, "1", left).await.is_err() {
                    // Away again: the rest waits for the next answer.
                    let mut unshared = publisher.inner.unshared.lock().expect("poisoned");
                    unshared.push((key, until));
                    unshared.extend(pending);
                    unshared.truncate(MAX_UNSHARED);
                    return;
                }
            }
            tracing::info!(
                count,
                "ids accepted without the shared dedupe window written to it"
            );
        });
    }

    /// Publishes with confirm; on failure or timeout stores the message in the outbox.
    ///
    /// While the outbox holds anything, new messages queue behind it so order is kept.
    pub async fn publish(&self, message: BusMessage) -> Result<Delivery, PublishFailed> {
        self.publish_waiting(message, self.inner.confirm_timeout)
            .await
    }

    /// [`Self::publish`], waiting at most `confirm_wait` for the broker (none: outbox at once).
    /// The publish is a span of the current trace, and the message carries that span as its
    /// `traceparent` (unless it already names one), so its consumers continue the trace.
    async fn publish_waiting(
        &self,
        mut message: BusMessage,
        confirm_wait: Duration,
    ) -> Result<Delivery, PublishFailed> {
        let span = tracing::info_span!(
            "publish",
            otel.kind = "producer",
            otel.name = %format!("publish {}", message.topic),
            messaging.destination.name = %message.topic,
            messaging.message.id = %message.message_id,
            delivery = tracing::field::Empty,
        );
        async move {
            if message.trace_parent.is_none() {
                message.trace_parent = current_traceparent();
            }
            let result = self.publish_or_store(message, confirm_wait).await;
            if let Ok(delivery) = &result {
                tracing::Span::current().record("delivery", delivery.as_str());
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn publish_or_store(
        &self,
        message: BusMessage,
        confirm_wait: Duration,
    ) -> Result<Delivery, PublishFailed> {
        let inner = &self.inner;
        let publish_error = if inner.outbox.depth() > 0 {
            PublishError::NotConnected
        } else if confirm_wait.is_zero() {
            PublishError::ConfirmTimeout(confirm_wait)
        } else {
            match self.publish_now(&message, confirm_wait).await {
                Ok(()) => return Ok(Delivery::Published),
                Err(error) => error,
            }
        };
        tracing::debug!(message_id = %message.message_id, error = %publish_error, "storing event in the outbox");
        match inner.outbox.append(&message).await {
            Ok(()) => {
                inner.metrics.outbox_written.inc();
                inner.metrics.outbox_depth.set(inner.outbox.depth() as i64);
                Ok(Delivery::Outboxed)
            }
            Err(store) => {
                tracing::error!(error = %store, "outbox write failed; event not accepted");
                Err(PublishFailed {
                    publish: publish_error,
                    store,
                })
            }
        }
    }

    /// One confirmed publish attempt, measured.
    async fn publish_now(
        &self,
        message: &BusMessage,
        confirm_wait: Duration,
    ) -> Result<(), PublishError> {
        let inner = &self.inner;
        let timer = inner.metrics.bus_confirm_duration.start_timer();
        let result = inner.bus.publish(message, confirm_wait).await;
        let outcome = match &result {
            Ok(()) => {
                timer.observe_duration();
                inner.confirms.lock().expect("poisoned").last_confirmed = Some(Instant::now());
                "confirmed"
            }
            Err(PublishError::ConfirmTimeout(_)) => {
                timer.stop_and_discard();
                inner.confirms.lock().expect("poisoned").last_timed_out = Some(Instant::now());
                inner.metrics.bus_confirm_timeouts.inc();
                "timed_out"
            }
            Err(_) => {
                timer.stop_and_discard();
                "failed"
            }
        };
        inner
            .metrics
            .bus_publishes
            .with_label_values(&[message.topic.as_str(), outcome])
            .inc();
        result
    }

    /// Publishes what the outbox holds, oldest first, whenever the broker is up; runs until
    /// `shutdown`, then makes one last attempt.
    pub async fn drain_outbox(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let delay = match self.drain_once().await {
                Ok(()) => {
                    backoff.reset();
                    Duration::from_secs(1)
                }
                Err(()) => backoff.next_delay(),
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = self.drain_once().await;
                    return;
                }
                _ = self.inner.outbox.appended() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Publishes every pending entry; stops at the first one the broker does not take.
    async fn drain_once(&self) -> Result<(), ()> {
        let inner = &self.inner;
        if inner.outbox.depth() == 0 {
            return Ok(());
        }
        if !inner.bus.is_ready() {
            return Err(());
        }
        let pending = inner.outbox.pending().await.map_err(|error| {
            tracing::error!(%error, "cannot list the outbox");
        })?;
        for entry in pending {
            let message = match inner.outbox.read(&entry).await {
                Ok(message) => message,
                Err(error @ OutboxError::Corrupt { .. }) => {
                    tracing::error!(%error, "moving an unreadable outbox entry aside");
                    let _ = inner.outbox.quarantine(entry).await;
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot read an outbox entry");
                    return Err(());
                }
            };
            if let Err(error) = self.publish_now(&message, inner.confirm_timeout).await {
                tracing::warn!(%error, depth = inner.outbox.depth(), "outbox drain paused");
                return Err(());
            }
            if let Err(error) = inner.outbox.remove(entry).await {
                // Published but still on disk: it would be published again (same message_id),
                // which consumers dedupe; stop rather than loop on it.
                tracing::error!(%error, "cannot remove a published outbox entry");
                return Err(());
            }
            inner.metrics.outbox_drained.inc();
            inner.metrics.outbox_depth.set(inner.outbox.depth() as i64);
        }
        tracing::info!("outbox drained");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures_util::future::BoxFuture;

    use super::*;
    use crate::{
        bus::memory::MemoryBus,
        state::{memory::MemoryStore, StoreError},
    };

    /// A shared store that can be taken away.
    #[derive(Default)]
    struct Flaky {
        entries: MemoryStore,
        down: AtomicBool,
    }

    impl Flaky {
        fn check(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                Err(StoreError::Unavailable("down".into()))
            } else {
                Ok(())
            }
        }
    }

    impl StateStore for Flaky {
        fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
            Box::pin(async move {
                self.check()?;
                self.entries.get(key).await
            })
        }
        fn put<'a>(
            &'a self,
            key: &'a str,
            value: &'a str,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                self.check()?;
                self.entries.put(key, value, ttl).await
            })
        }
        fn put_if_absent<'a>(
            &'a self,
            key: &'a str,
            value: &'a str,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<bool, StoreError>> {
            Box::pin(async move {
                self.check()?;
                self.entries.put_if_absent(key, value, ttl).await
            })
        }
        fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                self.check()?;
                self.entries.remove(key).await
            })
        }
        fn kind(&self) -> &'static str {
            "flaky"
        }
    }

    fn instance(shared: Arc<Flaky>, outbox: &std::path::Path) -> (EventPublisher, MemoryBus) {
        let bus = MemoryBus::new(String::new());
        let publisher = EventPublisher::new(
            Bus::Memory(bus.clone()),
            Outbox::open(outbox).unwrap(),
            shared,
            Duration::from_secs(60),
            Duration::from_secs(1),
            Metrics::new(),
        )
        .with_local_dedupe(Arc::new(MemoryStore::default()));
        (publisher, bus)
    }

    fn message(id: &str) -> BusMessage {
        BusMessage::json("t", id.into(), "c".into(), "k", "s", &serde_json::json!({})).unwrap()
    }

    #[tokio::test]
    async fn without_the_shared_window_ids_are_marked_deduped_locally_and_shared_later() {
        let shared = Arc::new(Flaky::default());
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, bus_a) = instance(shared.clone(), dir_a.path());
        let (b, _) = instance(shared.clone(), dir_b.path());

        shared.down.store(true, Ordering::SeqCst);
        assert_eq!(
            a.publish_once(message("m1")).await.unwrap(),
            Delivery::Published
        );
        assert_eq!(
            a.publish_once(message("m1")).await.unwrap(),
            Delivery::Duplicate,
            "the local window still answers"
        );
        assert!(bus_a.recent()[0].possible_duplicate);

        shared.down.store(false, Ordering::SeqCst);
        assert_eq!(
            a.publish_once(message("m2")).await.unwrap(),
            Delivery::Published
        );
        assert!(!bus_a.recent()[1].possible_duplicate);
        for _ in 0..100 {
            if shared.entries.get("seen:m1").await.unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            b.publish_once(message("m1")).await.unwrap(),
            Delivery::Duplicate,
            "another instance sees what was accepted while the shared window was away"
        );
    }
}
