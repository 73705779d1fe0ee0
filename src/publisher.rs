//! Publishing with the delivery guarantees of the design: confirmed publish, falling back to the
//! durable outbox when the broker is away or slow, and a dedupe window (`DEDUPE_TTL_SECONDS`,
//! 24 h by default) over message ids, so a provider's retry, or a captured request replayed
//! within the window, is not published again. Every connector publishes through
//! [`EventPublisher`].
//!
//! With a shared window (Redis) the check is one atomic set-if-absent, so a retry reaching
//! another instance is caught too. When the shared window cannot answer, an accepted webhook is
//! never refused for it: the local window ([`EventPublisher::with_local_dedupe`]) decides, and
//! what it lets through is marked as possibly duplicated.

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
                first
            }
            Err(error) => {
                tracing::warn!(%error, "shared dedupe window unavailable; deduplicating locally and marking the event as a possible duplicate");
                inner.metrics.dedupe_fallbacks.inc();
                message.possible_duplicate = true;
                match &inner.local_seen {
                    Some(local) => local.put_if_absent(&key, "1", window).await.unwrap_or(true),
                    None => true,
                }
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
