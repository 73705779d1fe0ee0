//! Shows what the service published for one message: from RabbitMQ through a temporary queue
//! bound before the message is sent, or from the embedded bus through `GET /_debug/events`.

use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;

use crate::{bus::amqp::tap::Tap, configuration::Settings};

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
            let (routing_key, body) = wait_for(tap, message_id, LIMIT)
                .await
                .with_context(|| format!("{message_id} did not appear on the bus within {LIMIT:?} (is the broker up? see /readyz)"))?;
            println!("published on {routing_key}:\n{}", pretty(&body));
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
            let events: serde_json::Value = request
                .send()
                .await
                .context("reading /_debug/events")?
                .error_for_status()
                .context("reading /_debug/events (is the service using the embedded bus?)")?
                .json()
                .await
                .context("reading /_debug/events")?;
            if let Some(event) = events["events"].as_array().and_then(|e| e.last()) {
                println!(
                    "published on {}:\n{}",
                    event["routingKey"].as_str().unwrap_or("?"),
                    serde_json::to_string_pretty(&event["body"])?
                );
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                println!("(not on the embedded bus yet: it may still be in the outbox)");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn pretty(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
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
