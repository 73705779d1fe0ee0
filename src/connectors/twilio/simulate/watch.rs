//! Shows what the service published for one message: from RabbitMQ through a temporary queue
//! bound before the message is sent, or from the embedded bus through `GET /_debug/events`.

use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;
use secrecy::ExposeSecret;

use crate::{
    bus::amqp::tap::Tap,
    configuration::Settings,
    output::{pretty_json, say},
};

/// How long the envelope may take to appear.
const LIMIT: Duration = Duration::from_secs(15);

pub struct Watch {
    tap: Option<Tap>,
}

impl Watch {
    /// With RabbitMQ, binds the temporary queue now, before anything is sent.
    pub async fn start(settings: &Settings) -> anyhow::Result<Self> {
        let tap = match &settings.bus.amqp_url {
            Some(url) => Some(
                Tap::bind(
                    url.expose_secret(),
                    &settings.bus.exchange,
                    &crate::bus::routing_key(
                        &settings.bus.prefix,
                        crate::envelope::topics::INGRESS,
                    ),
                )
                .await
                .context("binding a temporary queue to watch for the event")?,
            ),
            None => None,
        };
        Ok(Self { tap })
    }

    /// Prints the envelope published with `message_id` by the service at `service`.
    pub async fn show(
        &mut self,
        settings: &Settings,
        service: &str,
        message_id: &str,
    ) -> anyhow::Result<()> {
        if let Some(tap) = self.tap.as_mut() {
            let (routing_key, body) =
                wait_for(tap, message_id, LIMIT).await.with_context(|| {
                    format!(
                    "the service accepted {message_id}, but it did not arrive on exchange {:?} \
                     within {LIMIT:?}: does the service use the same AMQP_URL, AMQP_EXCHANGE \
                     and BUS_PREFIX as this shell?",
                    settings.bus.exchange
                )
                })?;
            say(format_args!(
                "published on {routing_key}:\n{}",
                pretty_json(&body)
            ))?;
            return Ok(());
        }
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let mut request = client
                .get(format!("{service}/_debug/events"))
                .query(&[("messageId", message_id)]);
            if let Some(token) = &settings.debug_token {
                request = request.bearer_auth(token.expose_secret());
            }
            let response = request.send().await.context("reading /_debug/events")?;
            if response.status() == StatusCode::NOT_FOUND {
                anyhow::bail!(
                    "the service published {message_id} to RabbitMQ, not to an embedded bus: \
                     set the service's AMQP_URL in this shell (or in .env) to see the envelope"
                );
            }
            let events: serde_json::Value = response
                .error_for_status()
                .context("reading /_debug/events (set the service's DEBUG_TOKEN in this shell)")?
                .json()
                .await
                .context("reading /_debug/events")?;
            if let Some(event) = events["events"].as_array().and_then(|e| e.last()) {
                say(format_args!(
                    "published on {}:\n{}",
                    event["routingKey"].as_str().unwrap_or("?"),
                    serde_json::to_string_pretty(&event["body"])?
                ))?;
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                say("(not on the embedded bus yet: it may still be in the outbox)")?;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits on `tap` for the message with `message_id`; returns its routing key and body.
async fn wait_for(
    tap: &mut Tap,
    message_id: &str,
    limit: Duration,
) -> anyhow::Result<(String, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let delivery = tap
            .next(left)
            .await
            .ok_or_else(|| anyhow::anyhow!("timed out"))?;
        if delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str())
            == Some(message_id)
        {
            return Ok((delivery.routing_key.to_string(), delivery.data));
        }
    }
}
