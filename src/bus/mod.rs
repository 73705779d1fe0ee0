//! The event bus: where envelopes are published and egress events come from.
//!
//! Two implementations sit behind [`Bus`]: RabbitMQ ([`amqp::AmqpBus`]) for real deployments and
//! an in-memory bus ([`memory::MemoryBus`]) so the service runs on a fresh machine with no
//! configuration. Publishers see [`BusMessage`] and [`PublishError`]; consumers see a
//! [`Subscription`] of [`delivery::Received`] messages, each settled through its
//! [`delivery::DeliveryHandle`].

pub mod amqp;
pub mod delivery;
pub mod memory;
pub mod message;

use std::time::Duration;

pub use message::{routing_key, BusMessage, BusState, PublishError, APP_ID};

use crate::configuration::BusSettings;
use amqp::subscription::AmqpSubscription;
use delivery::{Received, SubscriptionProbe, SubscriptionSpec};
use memory::MemorySubscription;

/// The bus in use.
#[derive(Clone)]
pub enum Bus {
    Amqp(amqp::AmqpBus),
    Memory(memory::MemoryBus),
}

impl Bus {
    /// Builds the bus `settings` ask for; the AMQP one connects in the background.
    pub fn from_settings(settings: &BusSettings) -> Self {
        match &settings.amqp_url {
            Some(_) => Bus::Amqp(amqp::AmqpBus::new(settings.clone())),
            None => Bus::Memory(memory::MemoryBus::new(settings.prefix.clone())),
        }
    }

    /// Publishes and waits for the broker's confirm, at most `timeout`.
    pub async fn publish(
        &self,
        message: &BusMessage,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        match self {
            Bus::Amqp(bus) => bus.publish(message, timeout).await,
            Bus::Memory(bus) => bus.publish(message),
        }
    }

    pub fn is_ready(&self) -> bool {
        match self {
            Bus::Amqp(bus) => bus.is_connected(),
            Bus::Memory(_) => true,
        }
    }

    pub fn state(&self) -> BusState {
        match self {
            Bus::Amqp(bus) => bus.state(),
            Bus::Memory(_) => BusState::Embedded,
        }
    }

    /// Closes the broker connection, if any.
    pub async fn close(&self) {
        if let Bus::Amqp(bus) = self {
            bus.close().await;
        }
    }

    /// Starts consuming `spec`'s queue (declaring it and its bindings on RabbitMQ; filtering the
    /// fan-out on the embedded bus). `probe` follows the subscription's state.
    pub fn subscribe(&self, spec: SubscriptionSpec, probe: SubscriptionProbe) -> Subscription {
        match self {
            Bus::Amqp(bus) => Subscription::Amqp(AmqpSubscription::start(bus.clone(), spec, probe)),
            Bus::Memory(bus) => Subscription::Memory(MemorySubscription::start(bus, spec, probe)),
        }
    }

    pub fn as_memory(&self) -> Option<&memory::MemoryBus> {
        match self {
            Bus::Memory(bus) => Some(bus),
            Bus::Amqp(_) => None,
        }
    }
}

/// A running subscription. [`Subscription::next`] is cancel-safe.
pub enum Subscription {
    Amqp(AmqpSubscription),
    Memory(MemorySubscription),
}

impl Subscription {
    /// The next delivery; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Received> {
        match self {
            Subscription::Amqp(subscription) => subscription.next().await,
            Subscription::Memory(subscription) => subscription.next().await,
        }
    }

    /// Stops new deliveries; those already received can still be settled until [`Self::close`].
    pub async fn stop(&mut self) {
        match self {
            Subscription::Amqp(subscription) => subscription.stop().await,
            Subscription::Memory(subscription) => subscription.stop(),
        }
    }

    /// Ends the subscription; the broker requeues whatever is still unsettled.
    pub async fn close(self) {
        if let Subscription::Amqp(subscription) = self {
            subscription.close().await;
        }
    }
}
