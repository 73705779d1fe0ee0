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
//! - [`partitions`]: consuming partitioned egress (router, one loop per partition, balancing).
//! - [`events`]: status (`internal.egress.status.v1`) and dead-letter (`internal.deadletter.v1`)
//!   event bodies, and the one [`events::Outcome`] enum.
//! - [`sink`]: the connector-neutral sink trait and its request/response types.
//!
//! Partitions (`EGRESS_PARTITIONS` > 1 on RabbitMQ): the shared egress queue is routed by
//! recipient into that many partition queues, each with a single active consumer among all
//! instances (see `bus::amqp::router` and `docs/architecture.md`); this instance runs one
//! consumer loop per partition over the one engine, so a recipient's events, all in one
//! partition, stay in order across instances.

pub mod consumer;
mod deliver;
pub mod engine;
#[cfg(test)]
mod engine_tests;
pub mod events;
pub mod ledger;
mod order;
mod partitions;
mod rate;
mod report;
mod select;
pub mod sink;

use std::sync::Arc;

use sha2::{Digest, Sha256};
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

/// The egress queue as the bus should consume it (with partitions, as the router does).
pub fn subscription_spec(settings: &BusSettings) -> SubscriptionSpec {
    SubscriptionSpec {
        queue: settings.egress_queue.clone(),
        queue_type: settings.egress_queue_type,
        topics: egress_topics(&settings.instance_id),
        prefetch: settings.prefetch,
        consumer_tag: format!("ingress-egress/{}", settings.instance_id),
        // One router at a time keeps the shared queue's order into the partitions.
        single_active_consumer: settings.egress_partitions > 1,
    }
}

/// Partition `index`'s queue: `<AMQP_EGRESS_QUEUE>.p<index>`, fed by the router only.
pub fn partition_spec(settings: &BusSettings, index: u16) -> SubscriptionSpec {
    SubscriptionSpec {
        queue: format!("{}.p{index}", settings.egress_queue),
        queue_type: settings.egress_queue_type,
        topics: Vec::new(),
        prefetch: settings.prefetch,
        consumer_tag: format!("ingress-egress/{}/p{index}", settings.instance_id),
        single_active_consumer: true,
    }
}

/// The partition of an egress event: its recipient, hashed (unreadable events go to 0).
pub fn partition_of(body: &[u8], partitions: usize) -> usize {
    let Some(key) = select::partition_key(body) else {
        return 0;
    };
    let digest = Sha256::digest(key.as_bytes());
    let hash = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (hash % partitions.max(1) as u64) as usize
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
    let metrics = setup.metrics.clone();
    let EgressSetup {
        sinks,
        config,
        publisher,
        ledger,
        metrics: engine_metrics,
    } = setup;
    let engine = Engine::new(
        sinks,
        publisher,
        ledger,
        engine_metrics,
        config,
        shutdown.clone(),
    );
    let shared_probe = SubscriptionProbe {
        consuming: ReadyFlag::default(),
        queue_depth: metrics.egress_queue_depth.clone(),
        active: None,
        consumers: None,
    };
    let amqp = match bus {
        Bus::Amqp(amqp) if bus_settings.egress_partitions > 1 => amqp.clone(),
        // One queue (or the embedded bus, where one process is all there is): consumed as is.
        _ => {
            let consuming = shared_probe.consuming.clone();
            let subscription = bus.subscribe(subscription_spec(bus_settings), shared_probe);
            let flag = consuming.clone();
            let task = tokio::spawn(async move {
                consumer::run(engine, subscription, shutdown).await;
                flag.set(false);
            });
            return (consuming, task);
        }
    };

    partitions::start(
        engine,
        amqp,
        bus,
        bus_settings,
        metrics,
        shutdown,
        shared_probe,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipients_events_share_one_partition_and_recipients_spread() {
        let event = |to: &str, text: &str| super::engine_tests::incoming(to, text).body;
        let first = partition_of(&event("+14155550100", "one"), 8);
        assert_eq!(partition_of(&event("+14155550100", "two"), 8), first);
        let used: std::collections::BTreeSet<usize> = (0..40)
            .map(|i| partition_of(&event(&format!("+1415555{i:04}"), "x"), 8))
            .collect();
        assert!(used.len() > 4, "40 recipients over 8 partitions: {used:?}");
        assert_eq!(partition_of(b"not json", 8), 0);
        assert_eq!(partition_of(&event("+14155550100", "one"), 1), 0);
    }
}
