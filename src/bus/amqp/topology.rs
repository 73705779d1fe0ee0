//! What the service declares on RabbitMQ: its topic exchange, and the durable queues it consumes
//! with their bindings. Declarations are idempotent (same arguments everywhere).

use std::time::Duration;

use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    Channel, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::ExposeSecret;

use crate::{
    bus::{
        delivery::SubscriptionSpec,
        message::{routing_key, APP_ID},
    },
    configuration::{scrub_url_password, BusSettings, QueueType},
};

/// Declares the service's exchange: durable, topic (idempotent; same arguments everywhere).
pub async fn declare_exchange(channel: &Channel, exchange: &str) -> lapin::Result<()> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// How long declaring a queue and its bindings may take.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a queue could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("AMQP_URL is not set")]
    NoBroker,
    #[error("declaring queue {queue:?} timed out after {DECLARE_TIMEOUT:?}")]
    TimedOut { queue: String },
    #[error("declaring queue {queue:?} failed: {detail}")]
    Broker { queue: String, detail: String },
}

/// Declares `spec`'s durable queue (quorum, else classic when the broker refuses) and binds it to
/// each of its topics, on a short-lived connection of its own: a refused declaration closes its
/// channel with an error, and on the shared connection that error would make the bus supervisor
/// drop and re-establish the connection (and the publishers' channel with it).
pub async fn declare_queue(
    settings: &BusSettings,
    spec: &SubscriptionSpec,
) -> Result<(), TopologyError> {
    let url = settings.amqp_url.as_ref().ok_or(TopologyError::NoBroker)?;
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("{APP_ID}/{}/declare", settings.instance_id).into());
    let queue = spec.queue.as_str();
    let setup = async {
        let connection = Connection::connect(url.expose_secret(), properties).await?;
        let declared = async {
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            let mut classic = FieldTable::default();
            if spec.single_active_consumer {
                classic.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            }
            let mut quorum = classic.clone();
            quorum.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            let mut channel = connection.create_channel().await?;
            // The bus declares the exchange too, on its own connection; declaring it here as
            // well means the bindings below never race it.
            declare_exchange(&channel, &settings.exchange).await?;
            let quorum_wanted = spec.queue_type == QueueType::Quorum;
            let declared = if quorum_wanted {
                channel.queue_declare(queue.into(), durable, quorum).await
            } else {
                channel
                    .queue_declare(queue.into(), durable, classic.clone())
                    .await
            };
            if let Err(error) = declared {
                if !quorum_wanted {
                    return Err(error);
                }
                // Refused (an existing classic queue, or no quorum support): the channel is
                // closed; declare a classic queue on a fresh one.
                tracing::info!(%error, queue, "quorum queue refused; using a classic queue");
                channel = connection.create_channel().await?;
                channel
                    .queue_declare(queue.into(), durable, classic)
                    .await?;
            }
            for topic in &spec.topics {
                channel
                    .queue_bind(
                        queue.into(),
                        settings.exchange.as_str().into(),
                        routing_key(&settings.prefix, topic).into(),
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
        Err(_) => Err(TopologyError::TimedOut {
            queue: queue.to_owned(),
        }),
        Ok(result) => result.map_err(|error| TopologyError::Broker {
            queue: queue.to_owned(),
            detail: scrub_url_password(&error.to_string(), url.expose_secret()),
        }),
    }
}
