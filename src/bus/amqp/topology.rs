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

/// The reply code with which RabbitMQ refuses to redeclare a queue with other arguments.
const PRECONDITION_FAILED: u16 = 406;

/// Why a queue could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("AMQP_URL is not set")]
    NoBroker,
    #[error("declaring queue {queue:?} timed out after {DECLARE_TIMEOUT:?}")]
    TimedOut { queue: String },
    #[error("declaring queue {queue:?} failed: {detail}")]
    Broker { queue: String, detail: String },
    /// The queue exists with another type: no retry can succeed.
    #[error(
        "queue {queue:?} exists as a {existing} queue but AMQP_EGRESS_QUEUE_TYPE={wanted}; egress \
         is stopped. Either set AMQP_EGRESS_QUEUE_TYPE={existing}, or migrate: point \
         AMQP_EGRESS_QUEUE at a new name (declared as {wanted} and bound to the same topics), \
         restart, and delete {queue:?} once it is empty"
    )]
    TypeMismatch {
        queue: String,
        existing: String,
        wanted: &'static str,
    },
    /// The broker refuses the declaration for good (the queue exists with other arguments).
    #[error(
        "queue {queue:?} exists with arguments the service does not declare ({detail}); egress \
         is stopped. Point AMQP_EGRESS_QUEUE at a new name, restart, and delete {queue:?} once \
         it is empty"
    )]
    Refused { queue: String, detail: String },
}

impl TopologyError {
    /// True when declaring again cannot help: the queue must change first.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            TopologyError::TypeMismatch { .. } | TopologyError::Refused { .. }
        )
    }
}

/// Declares `spec`'s durable queue and binds it to each of its topics, on a short-lived
/// connection of its own: a refused declaration closes its channel with an error, and on the
/// shared connection that error would make the bus supervisor drop and re-establish the
/// connection (and the publishers' channel with it).
///
/// A quorum queue falls back to classic where the broker refuses quorum queues, and an existing
/// classic queue is used as it is (with a warning saying how to migrate). An existing queue of
/// another type is [`TopologyError::TypeMismatch`] in every other case.
pub async fn declare_queue(
    settings: &BusSettings,
    spec: &SubscriptionSpec,
) -> Result<(), TopologyError> {
    let url = settings.amqp_url.as_ref().ok_or(TopologyError::NoBroker)?;
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("{APP_ID}/{}/declare", settings.instance_id).into());
    let queue = spec.queue.as_str();
    let broker = |error: lapin::Error| TopologyError::Broker {
        queue: queue.to_owned(),
        detail: scrub_url_password(&error.to_string(), url.expose_secret()),
    };
    let setup = async {
        let connection = Connection::connect(url.expose_secret(), properties)
            .await
            .map_err(broker)?;
        let declared = declare_on(&connection, settings, spec, &broker).await;
        // Close the channel before its connection: a dropped channel is closed in the
        // background, and closing the connection meanwhile makes the client log a spurious
        // "invalid channel state: Closing" error.
        if let Ok(channel) = &declared {
            let _ = channel.close(200, "declared".into()).await;
        }
        let _ = connection.close(200, "declared".into()).await;
        declared.map(|_| ())
    };
    tokio::time::timeout(DECLARE_TIMEOUT, setup)
        .await
        .unwrap_or_else(|_| {
            Err(TopologyError::TimedOut {
                queue: queue.to_owned(),
            })
        })
}

/// Declares the exchange, the queue and its bindings on `connection`; returns the open channel.
async fn declare_on(
    connection: &Connection,
    settings: &BusSettings,
    spec: &SubscriptionSpec,
    broker: &impl Fn(lapin::Error) -> TopologyError,
) -> Result<Channel, TopologyError> {
    let queue = spec.queue.as_str();
    let refused = |error: lapin::Error| match precondition_failed(&error) {
        Some(detail) => TopologyError::Refused {
            queue: queue.to_owned(),
            detail,
        },
        None => broker(error),
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut channel = connection.create_channel().await.map_err(broker)?;
    // The bus declares the exchange too, on its own connection; declaring it here as well
    // means the bindings below never race it.
    declare_exchange(&channel, &settings.exchange)
        .await
        .map_err(broker)?;
    let mut classic = FieldTable::default();
    if spec.single_active_consumer {
        classic.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    let mut arguments = classic.clone();
    if spec.queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    if let Err(error) = channel
        .queue_declare(queue.into(), durable, arguments)
        .await
    {
        let refusal = precondition_failed(&error);
        match (
            spec.queue_type,
            refusal.as_deref().and_then(existing_queue_type),
        ) {
            (QueueType::Quorum, Some("classic")) => tracing::warn!(
                queue,
                "queue exists as a classic queue: AMQP_EGRESS_QUEUE_TYPE=quorum is not applied \
                 and the queue is used as it is; to move to a quorum queue, point \
                 AMQP_EGRESS_QUEUE at a new name and delete the old queue once it is empty"
            ),
            (wanted, Some(existing)) => {
                return Err(TopologyError::TypeMismatch {
                    queue: queue.to_owned(),
                    existing: existing.to_owned(),
                    wanted: wanted.as_str(),
                })
            }
            // Refused for another reason: a broker without quorum queues, most likely.
            (QueueType::Quorum, None) => {
                tracing::info!(%error, queue, "quorum queue refused; using a classic queue")
            }
            (QueueType::Classic, None) => return Err(refused(error)),
        }
        // The refusal closed the channel; the classic declaration gets a fresh one.
        channel = connection.create_channel().await.map_err(broker)?;
        channel
            .queue_declare(queue.into(), durable, classic)
            .await
            .map_err(refused)?;
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
            .await
            .map_err(broker)?;
    }
    Ok(channel)
}

/// The broker's explanation when it refused a declaration with `PRECONDITION_FAILED`.
fn precondition_failed(error: &lapin::Error) -> Option<String> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == PRECONDITION_FAILED => {
            Some(amqp.get_message().to_string())
        }
        _ => None,
    }
}

/// The type of the existing queue, from RabbitMQ's refusal of a declaration with another
/// `x-queue-type` ("… inequivalent arg 'x-queue-type' … but current is the value 'quorum' …";
/// "current is none" is a classic queue, the default type).
fn existing_queue_type(refusal: &str) -> Option<&str> {
    if !refusal.contains("'x-queue-type'") {
        return None;
    }
    let current = &refusal[refusal.find("current is ")? + "current is ".len()..];
    if current.starts_with("none") {
        return Some("classic");
    }
    let value = current.strip_prefix("the value '")?;
    value.split('\'').next().filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_existing_type_is_read_from_rabbitmqs_refusal() {
        let quorum_exists = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue \
            'q' in vhost '/': received none but current is the value 'quorum' of type 'longstr'";
        assert_eq!(existing_queue_type(quorum_exists), Some("quorum"));
        let classic_exists = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue \
            'q' in vhost '/': received the value 'quorum' of type 'longstr' but current is none";
        assert_eq!(existing_queue_type(classic_exists), Some("classic"));
        let other = "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost \
            '/': received 'true' but current is 'false'";
        assert_eq!(existing_queue_type(other), None);
    }

    #[test]
    fn a_type_mismatch_is_one_line_saying_what_exists_and_how_to_migrate() {
        let error = TopologyError::TypeMismatch {
            queue: "ingress-egress.egress".into(),
            existing: "quorum".into(),
            wanted: "classic",
        };
        let line = error.to_string();
        assert!(!line.contains('\n'));
        assert!(line.contains("exists as a quorum queue but AMQP_EGRESS_QUEUE_TYPE=classic"));
        assert!(line.contains("set AMQP_EGRESS_QUEUE_TYPE=quorum"));
        assert!(line.contains("point AMQP_EGRESS_QUEUE at a new name"));
        assert!(error.is_permanent());
        assert!(!TopologyError::NoBroker.is_permanent());
    }
}
