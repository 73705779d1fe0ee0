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
//!
//! The instance that routes moves every event once more (consume, copy, confirm, ack): about a
//! fifth of a send's CPU. Serving a full share on top would make it the slowest instance and
//! cap the whole group at its pace, so it keeps one partition less than the fair share and the
//! others make up for it ([`share`]).

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
                    stopping: None,
                },
                release: Mutex::new(CancellationToken::new()),
            })
        })
        .collect();
    let mut flags = vec![shared.consuming.clone()];
    flags.extend(partitions.iter().map(|p| p.probe.consuming.clone()));
    let router_active = ReadyFlag::default();
    let router = Router {
        routing: router_active.clone(),
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
            stopping: None,
        },
    );
    let instances = metrics.egress_instances.clone();
    let task = tokio::spawn(async move {
        let routing = tokio::spawn(router.run(shutdown.clone()));
        let balancing = tokio::spawn(balance(
            partitions,
            instances,
            router_active,
            shutdown.clone(),
        ));
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
        let probe = SubscriptionProbe {
            // A child of `shutdown`: cancelled at once when the service stops, too.
            stopping: Some(release.clone()),
            ..partition.probe.clone()
        };
        let subscription = bus.subscribe(partition.spec.clone(), probe);
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
    routing: ReadyFlag,
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
        let keep = share(partitions.len(), instances.max(1) as usize, routing.get());
        let excess = active.len().saturating_sub(keep);
        for partition in active.into_iter().rev().take(excess) {
            if let Some(active) = &partition.probe.active {
                active.set(0);
            }
            tracing::info!(queue = %partition.spec.queue, instances, "serving more than a fair share of egress partitions; handing one over");
            partition.release.lock().await.cancel();
        }
    }
}

/// How many of `partitions` an instance serves at most when `instances` share them: the fair
/// share (rounded up), one less for the instance that also routes (when there is another to
/// take it), and enough more for the others that together they can still hold every partition.
fn share(partitions: usize, instances: usize, routing: bool) -> usize {
    let instances = instances.max(1);
    let fair = partitions.div_ceil(instances);
    if instances == 1 {
        return partitions;
    }
    let router = fair.saturating_sub(1);
    if routing {
        router
    } else {
        (partitions - router).div_ceil(instances - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn an_instance_keeps_at_most_its_fair_share() {
        assert_eq!(share(6, 2, false), 4);
        assert_eq!(share(4, 3, false), 2);
        assert_eq!(share(12, 3, false), 5);
        assert_eq!(share(4, 1, false), 4, "alone, it serves everything");
        assert_eq!(
            share(4, 1, true),
            4,
            "alone, it routes and serves everything"
        );
        assert_eq!(share(8, 0, false), 8, "no count sampled yet");
    }

    #[test]
    fn the_routing_instance_keeps_one_less_and_the_others_make_up_for_it() {
        assert_eq!((share(6, 3, true), share(6, 3, false)), (1, 3));
        assert_eq!((share(6, 2, true), share(6, 2, false)), (2, 4));
        assert_eq!((share(12, 3, true), share(12, 3, false)), (3, 5));
        assert_eq!((share(2, 3, true), share(2, 3, false)), (0, 1));
    }

    #[test]
    fn together_the_instances_can_always_hold_every_partition() {
        for partitions in 1..=64 {
            for instances in 1..=10 {
                let routing = share(partitions, instances, true);
                let others = share(partitions, instances, false);
                let total = if instances == 1 {
                    routing
                } else {
                    routing + (instances - 1) * others
                };
                assert!(
                    total >= partitions,
                    "{partitions} over {instances}: {total}"
                );
                assert!(
                    others <= partitions.div_ceil(instances) + 1,
                    "{partitions} over {instances}: {others}"
                );
            }
        }
    }
}
