//! Consuming a RabbitMQ queue with manual acknowledgements, across reconnects.
//!
//! A background task follows the bus's connection ([`super::AmqpBus::links`]). On every new
//! link it declares the queue and its bindings ([`super::topology::declare_queue`]), opens its
//! own channel on the link with the prefetch set and consumes; deliveries go to the subscriber
//! through a channel as deep as the prefetch (receiving from it is cancel-safe). When the
//! channel or connection fails it waits for the next link. While consuming it samples the
//! queue's depth. When the queue can never be declared as asked (it exists with another type or
//! other arguments) it stops and records why in the probe (`/readyz` shows it).
//!
//! Stopping is two steps so nothing is lost: [`AmqpSubscription::stop`] cancels the consumer
//! (no new deliveries) but keeps the channel, so deliveries in flight can still be acked;
//! [`AmqpSubscription::close`] then closes the channel, which returns anything unacked to the
//! queue. Acks are sent as few frames as possible ([`super::settlements`]).

use std::{sync::Arc, time::Duration};

use chrono::DateTime;
use futures_util::StreamExt;
use lapin::{
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::{AMQPValue, DeliveryTag, FieldTable, ShortString},
    BasicProperties, Channel,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{
    settlements::Settlements,
    topology::{declare_queue, TopologyError},
    AmqpBus, Link,
};
use crate::{
    backoff::Backoff,
    bus::delivery::{
        DeliveryHandle, Received, Settle, SettleError, SubscriptionProbe, SubscriptionSpec,
    },
    telemetry::trace_context::TRACEPARENT,
};

/// How often the queue's depth (and consumer count) is sampled for the metric, the debug
/// snapshot and the balancing of egress partitions.
const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(2);

pub struct AmqpSubscription {
    deliveries: mpsc::Receiver<Received>,
    stop: CancellationToken,
    close: CancellationToken,
    task: JoinHandle<()>,
}

impl AmqpSubscription {
    pub fn start(bus: AmqpBus, spec: SubscriptionSpec, probe: SubscriptionProbe) -> Self {
        let (sender, deliveries) = mpsc::channel(usize::from(spec.prefetch.max(1)));
        let stop = CancellationToken::new();
        let close = CancellationToken::new();
        let consumer = Consumer {
            bus,
            spec,
            probe,
            sender,
            stop: stop.clone(),
            close: close.clone(),
        };
        Self {
            deliveries,
            stop,
            close,
            task: tokio::spawn(consumer.run()),
        }
    }

    pub async fn next(&mut self) -> Option<Received> {
        self.deliveries.recv().await
    }

    pub async fn stop(&mut self) {
        self.stop.cancel();
        // Deliveries already buffered stay unacked and return to the queue on close.
        self.deliveries.close();
    }

    pub async fn close(self) {
        self.stop.cancel();
        self.close.cancel();
        let _ = self.task.await;
    }
}

struct Consumer {
    bus: AmqpBus,
    spec: SubscriptionSpec,
    probe: SubscriptionProbe,
    sender: mpsc::Sender<Received>,
    stop: CancellationToken,
    close: CancellationToken,
}

enum Ended {
    Stopped,
    LinkLost,
}

/// Why the queue could not be consumed on a link.
#[derive(Debug, thiserror::Error)]
enum OpenFailed {
    #[error(transparent)]
    Declare(#[from] TopologyError),
    #[error("cannot open a consumer channel: {0}")]
    Channel(#[from] lapin::Error),
}

impl Consumer {
    async fn run(self) {
        let mut links = self.bus.links();
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(15));
        loop {
            let link = tokio::select! {
                _ = self.stop.cancelled() => return,
                link = links.wait_for(Option::is_some) => match link {
                    Ok(link) => link.clone().expect("waited for Some"),
                    Err(_) => return, // the bus is gone
                },
            };
            let channel = match self.open(&link).await {
                Ok(channel) => channel,
                Err(OpenFailed::Declare(error)) if error.is_permanent() => {
                    // Declaring again cannot succeed until someone changes the queue or the
                    // configuration: stop, and say so where readiness is read.
                    tracing::error!(queue = %self.spec.queue, "{error}");
                    self.probe.consuming.fail(error.to_string());
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, queue = %self.spec.queue, "cannot consume the queue; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            let mut consumer = match channel
                .basic_consume(
                    self.spec.queue.as_str().into(),
                    ShortString::from(self.spec.consumer_tag.as_str()),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            {
                Ok(consumer) => consumer,
                Err(error) => {
                    tracing::warn!(%error, queue = %self.spec.queue, "cannot consume the queue; retrying");
                    let _ = channel.close(200, "retrying".into()).await;
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            backoff.reset();
            self.probe.consuming.set(true);
            tracing::info!(queue = %self.spec.queue, prefetch = self.spec.prefetch, "consuming");
            let settlements = Arc::new(Settlements::new(channel.clone(), self.spec.prefetch));
            let ended = self
                .consume(&channel, &mut consumer, &settlements, &mut links, &link)
                .await;
            self.probe.consuming.set(false);
            if let Some(active) = &self.probe.active {
                active.set(0);
            }
            match ended {
                Ended::Stopped => {
                    // Deliveries in flight are still settled until the channel closes, and
                    // the tick that sent waiting acks has stopped with the consumer.
                    let _ = settlements.stop_waiting();
                    self.close.cancelled().await;
                    let _ = channel.close(200, "shutdown".into()).await;
                    // Dropped only now: dropping a consumer cancels it, and a cancelled single
                    // active consumer lets the next one start before the channel returned ours.
                    drop(consumer);
                    return;
                }
                Ended::LinkLost => {
                    tracing::warn!(queue = %self.spec.queue, "consumer lost its channel; waiting for the broker");
                    let _ = channel.close(200, "reconnecting".into()).await;
                }
            }
        }
    }

    async fn open(&self, link: &Link) -> Result<Channel, OpenFailed> {
        declare_queue(self.bus.settings(), &self.spec).await?;
        let channel = link.connection.create_channel().await?;
        channel
            .basic_qos(self.spec.prefetch, BasicQosOptions::default())
            .await?;
        Ok(channel)
    }

    async fn consume(
        &self,
        channel: &Channel,
        consumer: &mut lapin::Consumer,
        settlements: &Arc<Settlements>,
        links: &mut watch::Receiver<Option<Arc<Link>>>,
        link: &Arc<Link>,
    ) -> Ended {
        let mut depth_sample = tokio::time::interval(QUEUE_DEPTH_INTERVAL);
        let flushing = settlements.flush_waiting(&self.spec.queue);
        tokio::pin!(flushing);
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    // With a single active consumer, cancelling would let the next consumer
                    // start while what we hold is still ours; closing the channel (in `run`)
                    // hands it over first.
                    if !self.spec.single_active_consumer {
                        let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                    }
                    return Ended::Stopped;
                }
                changed = links.changed() => {
                    let same = changed.is_ok()
                        && links.borrow().as_ref().is_some_and(|current| Arc::ptr_eq(current, link));
                    if !same {
                        return Ended::LinkLost;
                    }
                }
                () = &mut flushing => {}
                _ = depth_sample.tick() => {
                    // A passive declare only reads the queue's counters.
                    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
                    match channel.queue_declare(consumer.queue(), passive, FieldTable::default()).await {
                        Ok(queue) => {
                            self.probe.queue_depth.set(i64::from(queue.message_count()));
                            if let Some(consumers) = &self.probe.consumers {
                                consumers.set(i64::from(queue.consumer_count()));
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, queue = %self.spec.queue, "queue vanished");
                            return Ended::LinkLost;
                        }
                    }
                }
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        if let Some(active) = &self.probe.active {
                            active.set(1);
                        }
                        let received = Received {
                            message_id: delivery.properties.message_id().as_ref().map(|id| id.to_string()),
                            timestamp: delivery
                                .properties
                                .timestamp()
                                .and_then(|t| DateTime::from_timestamp(t as i64, 0)),
                            trace_parent: header_text(&delivery.properties, TRACEPARENT),
                            redelivered: delivery.redelivered,
                            body: delivery.data,
                            handle: DeliveryHandle::new(AmqpSettle {
                                settlements: settlements.clone(),
                                delivery_tag: delivery.delivery_tag,
                                returned_on_close: self
                                    .probe
                                    .stopping
                                    .clone()
                                    .filter(|_| self.spec.single_active_consumer),
                            }),
                        };
                        if self.sender.send(received).await.is_err() {
                            // The subscriber stopped listening; what it did not take returns
                            // to the queue when the channel closes.
                            if !self.spec.single_active_consumer {
                                let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                            }
                            return Ended::Stopped;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, queue = %self.spec.queue, "consumer failed");
                        return Ended::LinkLost;
                    }
                    None => return Ended::LinkLost,
                },
            }
        }
    }
}

/// A text header of a delivery (AMQP tables hold strings as long or short strings).
fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(text.to_string()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    }
}

/// Settles one delivery through its channel's [`Settlements`].
struct AmqpSettle {
    settlements: Arc<Settlements>,
    delivery_tag: DeliveryTag,
    /// With a single active consumer: the signal that the consumer is stopping. Once it is
    /// given, a requeue leaves the message unsettled instead: closing the channel returns
    /// everything unsettled in delivery order before the next consumer starts, whereas a
    /// message requeued now could reach the next consumer after later ones.
    returned_on_close: Option<CancellationToken>,
}

impl Settle for AmqpSettle {
    fn ack(&self) -> Result<(), SettleError> {
        self.settlements.ack(self.delivery_tag)
    }

    fn requeue(&self) -> Result<(), SettleError> {
        if self
            .returned_on_close
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            return Ok(());
        }
        self.settlements.nack(self.delivery_tag, true)
    }

    fn reject(&self) -> Result<(), SettleError> {
        self.settlements.nack(self.delivery_tag, false)
    }
}
