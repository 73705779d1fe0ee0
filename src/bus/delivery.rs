//! What a bus hands its consumers, whichever bus it is: the message ([`Received`]) with a handle
//! that settles it ([`DeliveryHandle`]: ack, requeue or reject), what to subscribe to
//! ([`SubscriptionSpec`]) and where a subscription reports its state ([`SubscriptionProbe`]).
//! The egress engine works only with these types (and `bus::Subscription`), so it knows neither
//! RabbitMQ nor the embedded bus.

use chrono::{DateTime, Utc};
use prometheus::IntGauge;
use sha2::{Digest, Sha256};

use crate::{configuration::QueueType, readiness::ReadyFlag};

/// Why a delivery could not be settled. The broker redelivers what was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("broker error: {0}")]
    Broker(String),
    #[error("this bus cannot {0} a message")]
    Unsupported(&'static str),
}

/// How one bus settles its deliveries. A settlement is handed to the bus, not waited for: one
/// that never reaches the broker leaves the message unsettled, and the broker delivers it
/// again, as it would after a settlement that failed. An error means it was refused at once
/// (the channel is closed, or the bus cannot do it).
pub trait Settle: Send + Sync {
    /// Done with it: the broker forgets it.
    fn ack(&self) -> Result<(), SettleError>;
    /// Not done: the broker delivers it again (to this or another consumer).
    fn requeue(&self) -> Result<(), SettleError>;
    /// Refused for good: the broker drops it (or dead-letters it, if the queue says so).
    fn reject(&self) -> Result<(), SettleError>;
}

/// Settles one delivery.
pub struct DeliveryHandle(Box<dyn Settle>);

impl DeliveryHandle {
    pub fn new(settle: impl Settle + 'static) -> Self {
        Self(Box::new(settle))
    }

    pub fn ack(&self) -> Result<(), SettleError> {
        self.0.ack()
    }

    pub fn requeue(&self) -> Result<(), SettleError> {
        self.0.requeue()
    }

    pub fn reject(&self) -> Result<(), SettleError> {
        self.0.reject()
    }
}

/// A delivery from a subscription.
pub struct Received {
    pub body: Vec<u8>,
    /// The message's `message_id`, when it has one.
    pub message_id: Option<String>,
    pub timestamp: Option<DateTime<Utc>>,
    /// The W3C `traceparent` it was published with, when it carries one.
    pub trace_parent: Option<String>,
    /// The broker delivered it before (to us or another consumer) without an ack.
    pub redelivered: bool,
    pub handle: DeliveryHandle,
}

impl Received {
    /// Identifies the message across redeliveries: its `message_id`, else a hash of its body.
    pub fn key(&self) -> String {
        match self.message_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => format!("mid:{id}"),
            _ => {
                let digest = Sha256::digest(&self.body);
                format!("sha256:{}", hex::encode(&digest[..16]))
            }
        }
    }
}

/// What to consume: a durable queue bound to topics (without `BUS_PREFIX`).
#[derive(Clone, Debug)]
pub struct SubscriptionSpec {
    pub queue: String,
    pub queue_type: QueueType,
    pub topics: Vec<String>,
    /// Deliveries in flight at most.
    pub prefetch: u16,
    /// Names this consumer in the broker's management views.
    pub consumer_tag: String,
    /// Declared with `x-single-active-consumer`: of every instance's consumer the broker
    /// feeds one, and the next one when it goes. Stopping then returns what was not taken
    /// without cancelling first, so the next consumer starts with it, in order.
    pub single_active_consumer: bool,
}

/// Where a subscription reports its state: up while consuming, and the queue's depth; and
/// whether its consumer is stopping.
#[derive(Clone, Debug)]
pub struct SubscriptionProbe {
    pub consuming: ReadyFlag,
    pub queue_depth: IntGauge,
    /// Set to 1 once deliveries arrive (this consumer is the active one), 0 when it stops.
    pub active: Option<IntGauge>,
    /// How many consumers the queue has, sampled with the depth.
    pub consumers: Option<IntGauge>,
    /// Cancelled once the consumer of a single-active-consumer queue is stopping: from then on
    /// a requeue leaves the message to the channel's close, which returns everything in
    /// delivery order before the next consumer starts.
    pub stopping: Option<tokio_util::sync::CancellationToken>,
}
