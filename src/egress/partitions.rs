//! Partitioned egress (`EGRESS_PARTITIONS` > 1 on RabbitMQ): the router that moves the shared
//! queue's events into partition queues, one consumer loop per partition over the one engine,
//! and the balancing of active partitions between instances.
//!
//! RabbitMQ makes one consumer active per partition (single active consumer), normally the one
//! that subscribed first, so the first instance up would serve every partition. To spread the
//! work, an instance that actively consumes more than its fair share (partitions ÷ instances
//! subscribed, rounded up) releases the excess: it stops taking that partition's deliveries,
//! lets those in flight finish, then closes the partition's channel, which hands what it had
//! not started, in order, to the next instance in line, and subscribes again at the end of
//! the line. An instance knows it is active on a partition once deliveries arrive from it, and
//! how many instances there are from a roll call: every instance consumes one more queue,
//! `<AMQP_EGRESS_QUEUE>.instances`, where nothing is ever published, and its consumer count is
//! the number of instances (a queue with a single active consumer reports only the active one).

use std::{sync::Arc, time::Duration};

use tokio::{sync::Mutex, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{consumer, engine::Engine, partition_of, partition_spec, subscription_spec};
use crate::{
    bus::{
        amqp::{router::Router, AmqpBus},
        delivery::{SubscriptionProbe, SubscriptionSpec},
        Bus,
    },
    configuration::{BusSettings, QueueType},
    metrics::Metrics,
    readiness::ReadyFlag,
};

/// How often an instance compares the partitions it serves with its fair share.
const BALANCE_INTERVAL: Duration = Duration::from_secs(2);

/// One partition as this instance consumes it.
struct Partition {
    spec: SubscriptionSpec,
    probe: SubscriptionProbe,
    /// Cancelled to hand the partition to the next instance (replaced on every subscription).
    release: Mutex<CancellationToken>,
}

/// Starts the router, one loop per partition and the balancer; the flag is up while all of
/// them consume. `shared` is the probe of the shared queue (the router's input).
pub(super) fn start(
    engine: Arc<Engine>,
    amqp: AmqpBus,
    bus: &Bus,
    settings: &BusSettings,
    metrics: Metrics,
    shutdown: CancellationToken,
    shared: SubscriptionProbe,
) -> (ReadyFlag, JoinHandle<()>) {
    let count = settings.egress_partitions;
    let partitions: Vec<Arc<Partition>> = (0..count)
        .map(|index| {
            let label = index.to_string();
            Arc::new(Partition {
                spec: partition_spec(settings, index),
                probe: SubscriptionProbe {
                    consuming: ReadyFlag::default(),
                    queue_depth: metrics.egress_partition_depth.with_label_values(&[&label]),
                    active: Some(metrics.egress_partition_active.with_label_values(&[&label])),
                    consumers: None,
                },
                release: Mutex::new(CancellationToken::new()),
            })
        })
        .collect();
    let mut flags = vec![shared.consuming.clone()];
    flags.extend(partitions.iter().map(|p| p.probe.consuming.clone()));
    let router = Router {
        bus: amqp,
        input: subscription_spec(settings),
        partitions: partitions.iter().map(|p| p.spec.clone()).collect(),
        partition_of: Arc::new(move |body: &[u8]| partition_of(body, usize::from(count))),
        probe: shared,
    };
    let loops: Vec<JoinHandle<()>> = partitions
        .iter()
        .map(|partition| {
            tokio::spawn(consume(
                engine.clone(),
                bus.clone(),
                partition.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    let consuming = ReadyFlag::all(flags);
    let flag = consuming.clone();
    let roll_call = bus.subscribe(
        roll_call_spec(settings),
        SubscriptionProbe {
            consuming: ReadyFlag::default(),
            queue_depth: prometheus::IntGauge::new("roll_call_depth", "unused").expect("valid"),
            active: None,
            consumers: Some(metrics.egress_instances.clone()),
        },
    );
    let instances = metrics.egress_instances.clone();
    let task = tokio::spawn(async move {
        let routing = tokio::spawn(router.run(shutdown.clone()));
        let balancing = tokio::spawn(balance(partitions, instances, shutdown.clone()));
        for consumer_loop in loops {
            let _ = consumer_loop.await;
        }
        let _ = routing.await;
        let _ = balancing.await;
        roll_call.close().await;
        flag.set(false);
    });
    (consuming, task)
}

/// The roll-call queue: one consumer per instance, no messages.
fn roll_call_spec(settings: &BusSettings) -> SubscriptionSpec {
    SubscriptionSpec {
        queue: format!("{}.instances", settings.egress_queue),
        queue_type: QueueType::Classic,
        topics: Vec::new(),
        prefetch: 1,
        consumer_tag: format!("ingress-egress/{}/roll-call", settings.instance_id),
        single_active_consumer: false,
    }
}

/// Consumes one partition until shutdown, subscribing again after every release.
async fn consume(
    engine: Arc<Engine>,
    bus: Bus,
    partition: Arc<Partition>,
    shutdown: CancellationToken,
) {
    loop {
        let release = shutdown.child_token();
        *partition.release.lock().await = release.clone();
        let subscription = bus.subscribe(partition.spec.clone(), partition.probe.clone());
        consumer::run(engine.clone(), subscription, release).await;
        if shutdown.is_cancelled() {
            return;
        }
        tracing::info!(queue = %partition.spec.queue, "egress partition handed over; waiting in line again");
    }
}

/// Releases the partitions this instance serves beyond its fair share, every
/// [`BALANCE_INTERVAL`].
async fn balance(
    partitions: Vec<Arc<Partition>>,
    instances: prometheus::IntGauge,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(BALANCE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let instances = instances.get();
        let active: Vec<&Arc<Partition>> = partitions
            .iter()
            .filter(|p| {
                p.probe
                    .active
                    .as_ref()
                    .is_some_and(|gauge| gauge.get() == 1)
            })
            .collect();
        let excess = excess(partitions.len(), instances.max(1) as usize, active.len());
        for partition in active.into_iter().rev().take(excess) {
            if let Some(active) = &partition.probe.active {
                active.set(0);
            }
            tracing::info!(queue = %partition.spec.queue, instances, "serving more than a fair share of egress partitions; handing one over");
            partition.release.lock().await.cancel();
        }
    }
}

/// How many of the `active` partitions (of `partitions`) to hand over when `instances`
/// share them.
fn excess(partitions: usize, instances: usize, active: usize) -> usize {
    active.saturating_sub(partitions.div_ceil(instances.max(1)))
}

#[cfg(test)]
mod tests {
    use super::excess;

    #[test]
    fn an_instance_keeps_at_most_its_fair_share() {
        assert_eq!(excess(6, 3, 6), 4);
        assert_eq!(excess(6, 3, 4), 2);
        assert_eq!(excess(6, 3, 2), 0);
        assert_eq!(excess(4, 3, 4), 2);
        assert_eq!(excess(4, 1, 4), 0, "alone, it serves everything");
        assert_eq!(excess(8, 0, 8), 0, "no count sampled yet");
    }
}
