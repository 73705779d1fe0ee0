//! The consumer loops: where egress deliveries come from.
//!
//! With RabbitMQ, on every new broker link (see [`crate::bus::amqp::AmqpBus::links`]) the loop
//! declares the durable egress queue (quorum, falling back to classic when the broker refuses)
//! and binds it to `BUS_PREFIX + internal.egress.v1` and `… .<INSTANCE_ID>` (on a short-lived
//! connection of its own, so a refused declaration cannot bounce the shared one), then opens
//! its own channel on the link, sets the prefetch and consumes with manual acks. When the
//! channel or connection fails it waits for the next link. Several instances on one queue
//! share the work.
//!
//! With the embedded bus it subscribes to the in-memory fan-out and picks the egress topics.
//!
//! On shutdown it stops consuming (basic.cancel), lets in-flight work finish or requeue itself
//! (the engine nacks with requeue at every safe point once shutdown is signalled), waits at
//! most [`DRAIN_GRACE`], then closes its channel, which returns anything still unacked.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    options::{
        BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
    Channel, Connection, ConnectionProperties,
};
use secrecy::ExposeSecret;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    process::{Acker, Engine, Incoming},
    sink::EgressSink,
};
use crate::{
    backoff::Backoff,
    bus::{amqp::AmqpBus, memory::MemoryBus, routing_key, Bus},
    configuration::{BusSettings, QueueType},
    envelope::topics,
    readiness::ReadyFlag,
};

/// How long in-flight sends may take to finish after shutdown starts (the service allows 8 s
/// for all background tasks).
pub const DRAIN_GRACE: Duration = Duration::from_secs(6);

/// How long declaring the egress queue may take.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the egress queue's depth is sampled for the metric and the debug snapshot.
const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(5);

/// The topics the egress queue is bound to (without `BUS_PREFIX`).
pub fn egress_topics(instance_id: &str) -> [String; 2] {
    [
        topics::EGRESS.to_owned(),
        format!("{}.{instance_id}", topics::EGRESS),
    ]
}

/// Runs the consumer until `shutdown`; `ready` is up while it is consuming.
pub async fn run<S: EgressSink>(
    engine: Arc<Engine<S>>,
    bus: Bus,
    settings: BusSettings,
    ready: ReadyFlag,
    shutdown: CancellationToken,
) {
    let mut inflight = JoinSet::new();
    match &bus {
        Bus::Amqp(amqp) => {
            run_amqp(&engine, amqp, &settings, &ready, &shutdown, &mut inflight).await
        }
        Bus::Memory(memory) => {
            run_memory(&engine, memory, &settings, &ready, &shutdown, &mut inflight).await
        }
    }
    ready.set(false);
    drain(&mut inflight).await;
    tracing::info!("egress consumer stopped");
}

/// Waits for in-flight work, at most [`DRAIN_GRACE`]; aborts what is left (those deliveries
/// stay unacked and return to the queue when the channel closes).
async fn drain(inflight: &mut JoinSet<()>) {
    if inflight.is_empty() {
        return;
    }
    tracing::info!(
        inflight = inflight.len(),
        "waiting for in-flight egress sends"
    );
    let finished = tokio::time::timeout(DRAIN_GRACE, async {
        while inflight.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            left = inflight.len(),
            "in-flight egress sends did not finish in time; they return to the queue"
        );
        inflight.abort_all();
        while inflight.join_next().await.is_some() {}
    }
}

enum Stopped {
    Shutdown,
    LinkLost,
}

async fn run_amqp<S: EgressSink>(
    engine: &Arc<Engine<S>>,
    bus: &AmqpBus,
    settings: &BusSettings,
    ready: &ReadyFlag,
    shutdown: &CancellationToken,
    inflight: &mut JoinSet<()>,
) {
    let mut links = bus.links();
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(15));
    loop {
        let link = tokio::select! {
            _ = shutdown.cancelled() => return,
            link = links.wait_for(Option::is_some) => match link {
                Ok(link) => link.clone().expect("waited for Some"),
                Err(_) => return, // the bus is gone
            },
        };
        let setup = match declare_topology(settings).await {
            Ok(()) => open_consumer_channel(&link.connection, settings)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error),
        };
        let channel = match setup {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(%error, "cannot set up the egress queue; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
        };
        let consumer = match channel
            .basic_consume(
                settings.egress_queue.as_str().into(),
                ShortString::from(format!("ingress-egress/{}", settings.instance_id)),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::warn!(%error, "cannot consume the egress queue; retrying");
                let _ = channel.close(200, "retrying".into()).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
        };
        backoff.reset();
        ready.set(true);
        tracing::info!(queue = %settings.egress_queue, prefetch = settings.prefetch, "egress consumer consuming");
        let stopped = consume(
            engine, &channel, consumer, &mut links, &link, shutdown, inflight,
        )
        .await;
        ready.set(false);
        match stopped {
            Stopped::Shutdown => {
                drain(inflight).await;
                let _ = channel.close(200, "shutdown".into()).await;
                return;
            }
            Stopped::LinkLost => {
                tracing::warn!("egress consumer lost its channel; waiting for the broker");
                let _ = channel.close(200, "reconnecting".into()).await;
            }
        }
    }
}

async fn consume<S: EgressSink>(
    engine: &Arc<Engine<S>>,
    channel: &Channel,
    mut consumer: lapin::Consumer,
    links: &mut tokio::sync::watch::Receiver<Option<Arc<crate::bus::amqp::Link>>>,
    link: &Arc<crate::bus::amqp::Link>,
    shutdown: &CancellationToken,
    inflight: &mut JoinSet<()>,
) -> Stopped {
    let mut depth_sample = tokio::time::interval(QUEUE_DEPTH_INTERVAL);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                return Stopped::Shutdown;
            }
            changed = links.changed() => {
                let same = changed.is_ok()
                    && links.borrow().as_ref().is_some_and(|current| Arc::ptr_eq(current, link));
                if !same {
                    return Stopped::LinkLost;
                }
            }
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            _ = depth_sample.tick() => {
                // A passive declare only reads the queue's counters.
                let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
                let queue = channel
                    .queue_declare(consumer.queue(), passive, FieldTable::default())
                    .await;
                match queue {
                    Ok(queue) => engine.metrics().egress_queue_depth.set(i64::from(queue.message_count())),
                    Err(error) => {
                        tracing::warn!(%error, "egress queue vanished");
                        return Stopped::LinkLost;
                    }
                }
            }
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let timestamp = delivery
                        .properties
                        .timestamp()
                        .and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0));
                    let incoming = Incoming {
                        message_id: delivery.properties.message_id().as_ref().map(|id| id.to_string()),
                        timestamp,
                        redelivered: delivery.redelivered,
                        body: delivery.data,
                        acker: Acker::Amqp(delivery.acker),
                    };
                    inflight.spawn(engine.accept(incoming));
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "egress consumer failed");
                    return Stopped::LinkLost;
                }
                None => return Stopped::LinkLost,
            },
        }
    }
}

/// Declares the egress queue (quorum, else classic) and binds it, on a short-lived connection
/// of its own: a refused declaration closes its channel with an error, and on the shared
/// connection that error would make the bus supervisor drop and re-establish the connection
/// (and the publishers' channel with it).
async fn declare_topology(settings: &BusSettings) -> Result<(), String> {
    let url = settings
        .amqp_url
        .as_ref()
        .ok_or_else(|| "AMQP_URL is not set".to_owned())?;
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("ingress-egress/{}/declare", settings.instance_id).into());
    let queue = settings.egress_queue.as_str();
    let setup = async {
        let connection = Connection::connect(url.expose_secret(), properties).await?;
        let declared = async {
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            let mut quorum = FieldTable::default();
            quorum.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            let mut channel = connection.create_channel().await?;
            // The bus declares the exchange too, on its own connection; declaring it here as
            // well means the bindings below never race it.
            crate::bus::amqp::declare_exchange(&channel, &settings.exchange).await?;
            let quorum_wanted = settings.egress_queue_type == QueueType::Quorum;
            let declared = if quorum_wanted {
                channel.queue_declare(queue.into(), durable, quorum).await
            } else {
                channel
                    .queue_declare(queue.into(), durable, FieldTable::default())
                    .await
            };
            if let Err(error) = declared {
                if !quorum_wanted {
                    return Err(error);
                }
                // Refused (an existing classic queue, or no quorum support): the channel is
                // closed; declare a classic queue on a fresh one.
                tracing::info!(%error, queue, "quorum egress queue refused; using a classic queue");
                channel = connection.create_channel().await?;
                channel
                    .queue_declare(queue.into(), durable, FieldTable::default())
                    .await?;
            }
            for topic in egress_topics(&settings.instance_id) {
                channel
                    .queue_bind(
                        queue.into(),
                        settings.exchange.as_str().into(),
                        routing_key(&settings.prefix, &topic).into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            Ok::<_, lapin::Error>(())
        }
        .await;
        let _ = connection.close(200, "declared".into()).await;
        declared
    };
    match tokio::time::timeout(DECLARE_TIMEOUT, setup).await {
        Err(_) => Err(format!(
            "declaring the egress queue timed out after {DECLARE_TIMEOUT:?}"
        )),
        Ok(result) => result.map_err(|e| e.to_string()),
    }
}

/// A channel on the shared connection with the prefetch set, for consuming.
async fn open_consumer_channel(
    connection: &lapin::Connection,
    settings: &BusSettings,
) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    Ok(channel)
}

async fn run_memory<S: EgressSink>(
    engine: &Arc<Engine<S>>,
    bus: &MemoryBus,
    settings: &BusSettings,
    ready: &ReadyFlag,
    shutdown: &CancellationToken,
    inflight: &mut JoinSet<()>,
) {
    let wanted = egress_topics(&settings.instance_id);
    let mut receiver = bus.subscribe();
    ready.set(true);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            message = receiver.recv() => match message {
                Ok(message) if wanted.contains(&message.topic) => {
                    let incoming = Incoming {
                        body: message.body.into_bytes(),
                        message_id: Some(message.message_id),
                        timestamp: Some(message.timestamp),
                        redelivered: false,
                        acker: Acker::None,
                    };
                    inflight.spawn(engine.accept(incoming));
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::error!(missed, "embedded bus overflowed; egress events were lost");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
