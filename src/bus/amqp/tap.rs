//! A way to watch what the service publishes (used by `simulate`, `watch` and the tests).

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
    Connection, ConnectionProperties,
};

use super::topology::declare_exchange;

/// An exclusive, auto-deleted queue bound to one routing key: a way to watch what the service
/// publishes (used by `simulate` and the tests). It disappears with its connection.
pub struct Tap {
    _connection: Connection,
    consumer: lapin::Consumer,
}

impl Tap {
    pub async fn bind(amqp_url: &str, exchange: &str, routing_key: &str) -> lapin::Result<Self> {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        declare_exchange(&channel, exchange).await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "tap".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            _connection: connection,
            consumer,
        })
    }

    /// The next message, or `None` when none arrives within `wait` (or the tap closed).
    pub async fn next(&mut self, wait: Duration) -> Option<lapin::message::Delivery> {
        tokio::time::timeout(wait, self.next_message())
            .await
            .ok()
            .flatten()
    }

    /// The next message, however long it takes; `None` once the tap closed.
    pub async fn next_message(&mut self) -> Option<lapin::message::Delivery> {
        match self.consumer.next().await {
            Some(Ok(delivery)) => Some(delivery),
            _ => None,
        }
    }
}
