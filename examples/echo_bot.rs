//! A reference consumer of ingress-egress: a bot that answers every inbound chat message with
//! "echo: <its text>".
//!
//! It follows the bus contract (`openapi/asyncapi.yaml`) and nothing else: it uses `lapin`,
//! `serde_json` and `chrono`, not the ingress-egress library.
//!
//! - Its own durable queue (`ECHO_BOT_QUEUE`, default `echo-bot.inbound`) is bound to
//!   `BUS_PREFIX` + `internal.ingress.v1` on the durable topic exchange `AMQP_EXCHANGE`
//!   (default `events`), declared with the same arguments the service uses.
//! - Each reply is the inbound envelope with a selected candidate "echo: …" and the routing
//!   stage `responded`, published persistent on `internal.egress.v1` with confirms. It keeps
//!   the envelope's `correlationId` (status events for the reply carry it), `traceId` and the
//!   delivery's `traceparent` header (the reply's delivery joins the inbound message's trace).
//!   Its `message_id` is derived from the inbound one, so a redelivered inbound message yields
//!   the same reply id and the service does not send it twice.
//! - The inbound message is acknowledged only after the broker confirmed the reply: a crash in
//!   between redelivers it (at least once, deduplicated downstream by `message_id`).
//! - Anything that is not a user's chat message with text is acknowledged and left alone.
//!
//! Run it beside the service: `AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run
//! --example echo_bot`. The tests run [`run`] as a task (`tests/api/echo_bot.rs`).

use std::future::Future;

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use lapin::{
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
};
use serde_json::{json, Value};

/// The topic inbound messages arrive on, and the one replies go to.
pub const INGRESS_TOPIC: &str = "internal.ingress.v1";
pub const EGRESS_TOPIC: &str = "internal.egress.v1";
/// The envelope `type` (and AMQP `type`) of chat messages.
pub const CHAT_MESSAGE: &str = "chat.message.v1";
/// This bot's `app_id`, CloudEvents `source` and candidate `source`.
pub const BOT: &str = "echo-bot";

/// Where the bot connects and what it consumes.
#[derive(Clone, Debug)]
pub struct Config {
    pub amqp_url: String,
    pub exchange: String,
    /// `BUS_PREFIX`: prepended to every routing key.
    pub prefix: String,
    pub queue: String,
}

impl Config {
    /// From `AMQP_URL`, `AMQP_EXCHANGE`, `BUS_PREFIX` and `ECHO_BOT_QUEUE`.
    pub fn from_env() -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        Self {
            amqp_url: var("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            exchange: var("AMQP_EXCHANGE", "events"),
            prefix: var("BUS_PREFIX", ""),
            queue: var("ECHO_BOT_QUEUE", "echo-bot.inbound"),
        }
    }
}

/// A reply ready to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub message_id: String,
    pub correlation_id: String,
    pub traceparent: Option<String>,
    pub envelope: Value,
}

/// The reply to an inbound event: `None` unless it is a user's chat message with text.
pub fn reply_to(
    inbound: &Value,
    inbound_message_id: Option<&str>,
    traceparent: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Reply> {
    if inbound["type"] != CHAT_MESSAGE || inbound["message"]["role"] != "user" {
        return None;
    }
    let text = inbound["message"]["text"].as_str()?.trim();
    let correlation_id = inbound["correlationId"].as_str()?.to_owned();
    if text.is_empty() {
        return None;
    }
    // Stable: the same inbound message always yields the same reply id.
    let message_id = format!("{BOT}:{}", inbound_message_id.unwrap_or(&correlation_id));
    let at = now.to_rfc3339_opts(SecondsFormat::Millis, true);

    let mut envelope = inbound.clone();
    envelope["candidates"] = json!([{
        "id": message_id,
        "kind": "text",
        "source": BOT,
        "createdAt": at,
        "status": "selected",
        "priority": 0,
        "confidence": 1.0,
        "text": format!("echo: {text}"),
    }]);
    let previous_stage = envelope["routing"]["stage"].take();
    envelope["routing"]["stage"] = json!("responded");
    if let Some(history) = envelope["routing"]["history"].as_array_mut() {
        history.push(json!({"stage": previous_stage, "by": BOT, "at": at}));
    }
    Some(Reply {
        message_id,
        correlation_id,
        traceparent: traceparent.map(str::to_owned),
        envelope,
    })
}

/// The AMQP properties and headers of a reply, as the contract asks of publishers.
pub fn reply_properties(reply: &Reply, now: DateTime<Utc>) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut header = |name: &str, value: &str| {
        headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
    };
    header("cloudEvents:specversion", "1.0");
    header("cloudEvents:id", &reply.message_id);
    header("cloudEvents:source", BOT);
    header("cloudEvents:type", CHAT_MESSAGE);
    header("cloudEvents:time", &now.to_rfc3339());
    header("cloudEvents:datacontenttype", "application/json");
    if let Some(traceparent) = &reply.traceparent {
        header("traceparent", traceparent);
    }
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(reply.message_id.as_str().into())
        .with_correlation_id(reply.correlation_id.as_str().into())
        .with_type(CHAT_MESSAGE.into())
        .with_timestamp(now.timestamp().max(0) as u64)
        .with_app_id(BOT.into())
        .with_headers(headers)
}

/// Consumes until `stop` completes, then closes the connection (unacknowledged messages return
/// to the queue).
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> lapin::Result<()> {
    let connection = Connection::connect(&config.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel.basic_qos(16, BasicQosOptions::default()).await?;
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            config.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            config.queue.as_str().into(),
            config.exchange.as_str().into(),
            format!("{}{INGRESS_TOPIC}", config.prefix).as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            BOT.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    tokio::pin!(stop);
    let result = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    if let Err(error) = answer(&channel, &config, &delivery).await {
                        break Err(error);
                    }
                }
                Some(Err(error)) => break Err(error),
                None => break Ok(()),
            },
        }
    };
    let _ = connection.close(200, "echo bot stopping".into()).await;
    result
}

/// Publishes the reply to one delivery (if it calls for one), then acknowledges it.
async fn answer(
    channel: &Channel,
    config: &Config,
    delivery: &lapin::message::Delivery,
) -> lapin::Result<()> {
    let properties = &delivery.properties;
    let inbound_id = properties.message_id().as_ref().map(|id| id.to_string());
    let traceparent = match properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get("traceparent"))
    {
        Some(AMQPValue::LongString(value)) => Some(value.to_string()),
        Some(AMQPValue::ShortString(value)) => Some(value.to_string()),
        _ => None,
    };
    let inbound: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
    let now = Utc::now();
    if let Some(reply) = reply_to(&inbound, inbound_id.as_deref(), traceparent.as_deref(), now) {
        let body = serde_json::to_vec(&reply.envelope).expect("JSON values serialise");
        let confirm = channel
            .basic_publish(
                config.exchange.as_str().into(),
                format!("{}{EGRESS_TOPIC}", config.prefix).as_str().into(),
                BasicPublishOptions::default(),
                &body,
                reply_properties(&reply, now),
            )
            .await?
            .await?;
        if !confirm.is_ack() {
            // Not taken: the inbound message goes back to the queue for another try.
            eprintln!("echo-bot: the broker refused reply {}", reply.message_id);
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            return delivery.acker.nack(requeue).await.map(|_| ());
        }
    }
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
}

#[tokio::main]
async fn main() -> lapin::Result<()> {
    let config = Config::from_env();
    eprintln!(
        "echo-bot: consuming {} (bound to {}{INGRESS_TOPIC} on {}); Ctrl-C stops",
        config.queue, config.prefix, config.exchange
    );
    run(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
