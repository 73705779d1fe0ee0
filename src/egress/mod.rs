//! Egress: bus → platform. Consumes `internal.egress.v1` events and delivers each through the
//! [`sink::EgressSink`] of the connector it names, effectively once: deterministic idempotency
//! tokens, settled only after the platform accepted the send or a terminal outcome was
//! published. The engine knows neither the broker (it sees `bus::Subscription` deliveries) nor
//! any platform (it sees `dyn EgressSink`s).
//!
//! Module map:
//! - [`consumer`]: the loop that takes deliveries and runs the engine's work; shutdown.
//! - [`engine`]: one delivery from bytes to a plan (parse, route to a sink, split, order).
//! - [`deliver`]: sending a plan's parts, rate limited, with retries.
//! - [`report`]: the outcome published, counted and the delivery settled.
//! - [`ledger`]: what became of each part (sent, or attempted with unknown outcome).
//! - [`select`]: which text, media and target an `InternalEventV2` asks us to send (DESIGN §3.2).
//! - [`rate`]: per-sender token bucket.
//! - [`order`]: per-recipient sequencing (same recipient in order, others concurrent).
//! - [`events`]: status (`internal.egress.status.v1`) and dead-letter (`internal.deadletter.v1`)
//!   event bodies, and the one [`events::Outcome`] enum.
//! - [`sink`]: the connector-neutral sink trait and its request/response types.

pub mod consumer;
mod deliver;
pub mod engine;
#[cfg(test)]
mod engine_tests;
pub mod events;
pub mod ledger;
mod order;
mod rate;
mod report;
mod select;
pub mod sink;

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    bus::{
        delivery::{SubscriptionProbe, SubscriptionSpec},
        Bus,
    },
    configuration::BusSettings,
    envelope::topics,
    metrics::Metrics,
    publisher::EventPublisher,
    readiness::ReadyFlag,
};
use engine::{Engine, EngineConfig};
use ledger::SendLedger;
use sink::EgressSink;

/// The topics the egress queue is bound to (without `BUS_PREFIX`): every instance's shared
/// topic and this instance's own.
pub fn egress_topics(instance_id: &str) -> Vec<String> {
    vec![
        topics::EGRESS.to_owned(),
        format!("{}.{instance_id}", topics::EGRESS),
    ]
}

/// The egress queue as the bus should consume it.
pub fn subscription_spec(settings: &BusSettings) -> SubscriptionSpec {
    SubscriptionSpec {
        queue: settings.egress_queue.clone(),
        queue_type: settings.egress_queue_type,
        topics: egress_topics(&settings.instance_id),
        prefetch: settings.prefetch,
        consumer_tag: format!("ingress-egress/{}", settings.instance_id),
    }
}

/// What the egress engine works with.
pub struct EgressSetup {
    pub sinks: Vec<Arc<dyn EgressSink>>,
    pub config: EngineConfig,
    pub publisher: EventPublisher,
    pub ledger: SendLedger,
    pub metrics: Metrics,
}

/// Starts consuming egress events for the sinks in the background. The flag is up while it
/// consumes; the task ends after `shutdown` once in-flight sends finished or were requeued.
pub fn start(
    setup: EgressSetup,
    bus: &Bus,
    bus_settings: &BusSettings,
    shutdown: CancellationToken,
) -> (ReadyFlag, JoinHandle<()>) {
    let EgressSetup {
        sinks,
        config,
        publisher,
        ledger,
        metrics,
    } = setup;
    let probe = SubscriptionProbe {
        consuming: ReadyFlag::default(),
        queue_depth: metrics.egress_queue_depth.clone(),
    };
    let consuming = probe.consuming.clone();
    let subscription = bus.subscribe(subscription_spec(bus_settings), probe);
    let engine = Engine::new(sinks, publisher, ledger, metrics, config, shutdown.clone());
    let flag = consuming.clone();
    let task = tokio::spawn(async move {
        consumer::run(engine, subscription, shutdown).await;
        flag.set(false);
    });
    (consuming, task)
}
