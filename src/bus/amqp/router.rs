//! The egress partition router: consumes the shared egress queue and moves each message, with
//! all its properties, into the partition queue its key hashes to (through the default
//! exchange, `mandatory`, with a publisher confirm), acknowledging the original only after the
//! broker confirmed the copy. Downstream services keep publishing to the same routing keys; the
//! partitions are this service's own.
//!
//! Order: the shared queue is declared with a single active consumer, so one router (of all
//! instances) runs at a time and takes messages in queue order. Each partition has its own
//! worker that moves one message at a time (publish, confirm, ack, next), so a partition
//! receives its messages in the order the shared queue held them, also when a copy has to be
//! retried; partitions do not wait for each other.
//!
//! A router that dies, or loses its connection, between a confirmed copy and its ack leaves
//! the original to be routed again: the partition then holds the message twice, with the same
//! `message_id`, and the send ledger keeps the second from being sent. On shutdown the router
//! stops taking messages, lets the workers finish what they hold (briefly), then closes its
//! channel, which hands the rest, in order, to the next router.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions,
    },
    types::{FieldTable, ShortString},
    Channel,
};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{settlements::Settlements, topology::declare_queue, AmqpBus, Link};
use crate::{
    backoff::Backoff,
    bus::delivery::{SubscriptionProbe, SubscriptionSpec},
    readiness::ReadyFlag,
};

/// Chooses the partition (`0..partitions`) of a message from its body.
pub type PartitionFn = Arc<dyn Fn(&[u8]) -> usize + Send + Sync>;

/// How long the workers may take to move what they hold once the router stops.
const HANDOVER_GRACE: Duration = Duration::from_secs(2);

/// How often the shared queue's depth is sampled.
const DEPTH_INTERVAL: Duration = Duration::from_secs(5);

pub struct Router {
    pub bus: AmqpBus,
    /// The shared queue, with its bindings.
    pub input: SubscriptionSpec,
    /// The partition queues, in partition order.
    pub partitions: Vec<SubscriptionSpec>,
    pub partition_of: PartitionFn,
    /// `consuming` follows the router's consumer; `queue_depth` the shared queue's depth.
    pub probe: SubscriptionProbe,
    /// Up while this instance is the active router (the shared queue delivers to it; the
    /// others wait in line), so partition balancing can count the routing as work.
    pub routing: ReadyFlag,
}

enum Ended {
    Stopped,
    LinkLost,
}

impl Router {
    /// Routes until `stop`, across reconnects.
    pub async fn run(self, stop: CancellationToken) {
        let mut links = self.bus.links();
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(15));
        loop {
            let link = tokio::select! {
                _ = stop.cancelled() => return,
                link = links.wait_for(Option::is_some) => match link {
                    Ok(link) => link.clone().expect("waited for Some"),
                    Err(_) => return,
                },
            };
            let ended = self.route(&link, &mut links, &stop).await;
            self.probe.consuming.set(false);
            self.routing.set(false);
            match ended {
                Ok(Ended::Stopped) => return,
                Ok(Ended::LinkLost) => {
                    tracing::warn!(queue = %self.input.queue, "egress router lost its channel; waiting for the broker");
                }
                Err(error) => {
                    tracing::warn!(%error, queue = %self.input.queue, "egress router cannot start; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    async fn route(
        &self,
        link: &Arc<Link>,
        links: &mut tokio::sync::watch::Receiver<Option<Arc<Link>>>,
        stop: &CancellationToken,
    ) -> Result<Ended, String> {
        let settings = self.bus.settings();
        for spec in self.partitions.iter().chain(std::iter::once(&self.input)) {
            declare_queue(settings, spec)
                .await
                .map_err(|e| e.to_string())?;
        }
        let open = async {
            let consuming = link.connection.create_channel().await?;
            consuming
                .basic_qos(self.input.prefetch, BasicQosOptions::default())
                .await?;
            let publishing = link.connection.create_channel().await?;
            publishing
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let consumer = consuming
                .basic_consume(
                    self.input.queue.as_str().into(),
                    ShortString::from(self.input.consumer_tag.as_str()),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((consuming, publishing, consumer))
        };
        let (consuming, publishing, mut consumer) = open.await.map_err(|e| e.to_string())?;
        let settlements = Arc::new(Settlements::new(consuming.clone(), self.input.prefetch));
        self.probe.consuming.set(true);
        tracing::info!(queue = %self.input.queue, partitions = self.partitions.len(), "routing egress events into partitions");

        let mut workers = JoinSet::new();
        let mut lanes = Vec::with_capacity(self.partitions.len());
        for spec in &self.partitions {
            let (lane, mut queued) = mpsc::unbounded_channel::<Delivery>();
            lanes.push(lane);
            let channel = publishing.clone();
            let queue = spec.queue.clone();
            let settlements = settlements.clone();
            workers.spawn(async move {
                while let Some(delivery) = queued.recv().await {
                    forward(&channel, &queue, delivery, &settlements).await?;
                }
                Ok::<_, String>(())
            });
        }

        let mut depth = tokio::time::interval(DEPTH_INTERVAL);
        let flushing = settlements.flush_waiting(&self.input.queue);
        tokio::pin!(flushing);
        let ended = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break Ended::Stopped,
                () = &mut flushing => {}
                Some(worker) = workers.join_next() => {
                    if let Ok(Err(error)) = worker {
                        tracing::warn!(%error, "egress router cannot copy into a partition");
                    }
                    break Ended::LinkLost;
                }
                changed = links.changed() => {
                    let same = changed.is_ok()
                        && links.borrow().as_ref().is_some_and(|current| Arc::ptr_eq(current, link));
                    if !same {
                        break Ended::LinkLost;
                    }
                }
                _ = depth.tick() => {
                    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
                    match consuming.queue_declare(self.input.queue.as_str().into(), passive, FieldTable::default()).await {
                        Ok(queue) => self.probe.queue_depth.set(i64::from(queue.message_count())),
                        Err(_) => break Ended::LinkLost,
                    }
                }
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        self.routing.set(true);
                        let partition = (self.partition_of)(&delivery.data) % lanes.len();
                        // A closed lane means its worker ended; the join above handles it.
                        let _ = lanes[partition].send(delivery);
                    }
                    _ => break Ended::LinkLost,
                },
            }
        };
        // Workers finish what they hold (their lanes close), then the channel closes and the
        // broker hands anything unacknowledged, in order, to the next router.
        drop(lanes);
        if matches!(ended, Ended::Stopped) {
            let _ = tokio::time::timeout(HANDOVER_GRACE, async {
                while workers.join_next().await.is_some() {}
            })
            .await;
        }
        workers.abort_all();
        let _ = settlements.stop_waiting();
        let _ = consuming.close(200, "router stopped".into()).await;
        let _ = publishing.close(200, "router stopped".into()).await;
        Ok(ended)
    }
}

/// Copies `delivery` into `queue` until the broker confirms it there, then acknowledges the
/// original through the consuming channel's `settlements` (queued, not waited for, and
/// coalesced with the other partitions' acks). Fails only when a channel does (the original
/// then returns to the shared queue).
async fn forward(
    channel: &Channel,
    queue: &str,
    delivery: Delivery,
    settlements: &Settlements,
) -> Result<(), String> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let publish = async {
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    delivery.properties.clone(),
                )
                .await?
                .await
        };
        let confirmation = publish.await.map_err(|e| e.to_string())?;
        // Acked and not returned as unroutable: the partition queue holds it.
        let held = confirmation.is_ack() && confirmation.take_message().is_none();
        if held {
            return settlements
                .ack(delivery.delivery_tag)
                .map_err(|e| e.to_string());
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            queue,
            ?delay,
            "partition queue did not take an egress event; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}
