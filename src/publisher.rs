//! Publishing with the delivery guarantees of the design: confirmed publish, falling back to the
//! durable outbox when the broker is away or slow, and a short-lived dedupe cache for provider
//! retries. Every connector publishes through [`EventPublisher`].

use std::{sync::Arc, time::Duration};

use moka::sync::Cache;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    bus::{Bus, BusMessage, PublishError},
    metrics::Metrics,
    outbox::{Outbox, OutboxError},
};

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

/// Neither the broker nor the outbox took the message: the caller must not acknowledge it.
#[derive(Debug, thiserror::Error)]
#[error("event could not be published ({publish}) nor stored ({store})")]
pub struct PublishFailed {
    pub publish: PublishError,
    pub store: OutboxError,
}

#[derive(Clone)]
pub struct EventPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    outbox: Outbox,
    recently_accepted: Cache<String, ()>,
    confirm_timeout: Duration,
    metrics: Metrics,
}

impl EventPublisher {
    pub fn new(
        bus: Bus,
        outbox: Outbox,
        dedupe_ttl: Duration,
        confirm_timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        metrics.outbox_depth.set(outbox.depth() as i64);
        Self {
            inner: Arc::new(Inner {
                bus,
                outbox,
                recently_accepted: Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(dedupe_ttl)
                    .build(),
                confirm_timeout,
                metrics,
            }),
        }
    }

    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// Publishes unless the same `message_id` was accepted within the dedupe window.
    pub async fn publish_once(&self, message: BusMessage) -> Result<Delivery, PublishFailed> {
        let entry = self
            .inner
            .recently_accepted
            .entry(message.message_id.clone())
            .or_insert(());
        if !entry.is_fresh() {
            return Ok(Delivery::Duplicate);
        }
        let message_id = entry.key().clone();
        let result = self.publish(message).await;
        if result.is_err() {
            // Not accepted: let the provider's retry through.
            self.inner.recently_accepted.invalidate(&message_id);
        }
        result
    }

    /// Publishes with confirm; on failure or timeout stores the message in the outbox.
    ///
    /// While the outbox holds anything, new messages queue behind it so order is kept.
    pub async fn publish(&self, message: BusMessage) -> Result<Delivery, PublishFailed> {
        let inner = &self.inner;
        let publish_error = if inner.outbox.depth() > 0 {
            PublishError::NotConnected
        } else {
            match self.publish_now(&message).await {
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
    async fn publish_now(&self, message: &BusMessage) -> Result<(), PublishError> {
        let inner = &self.inner;
        let timer = inner.metrics.bus_confirm_duration.start_timer();
        let result = inner.bus.publish(message, inner.confirm_timeout).await;
        let outcome = if result.is_ok() {
            timer.observe_duration();
            "confirmed"
        } else {
            timer.stop_and_discard();
            "failed"
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
            if let Err(error) = self.publish_now(&message).await {
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
