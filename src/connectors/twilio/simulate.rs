//! `ingress-egress simulate sms`: signs a sample inbound-SMS webhook exactly as Twilio would,
//! posts it to a running service and shows the envelope it published (embedded bus) or as
//! RabbitMQ delivered it.
//!
//! It signs with its own configuration (environment and `.env`, like the service). When the
//! service refuses the signature, it reads the service's non-secret signing facts from
//! `/_debug/twilio` and says which setting differs ([`super::signing::differences`]). The
//! webhook's `X-Ingress-Delivery` answer says whether the event was published, stored in the
//! outbox or a duplicate that was not published again.
//!
//! Output goes through [`say`]: a reader that goes away (`simulate … | head`) ends the command
//! quietly instead of a panic.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::StatusCode;
use secrecy::ExposeSecret;

use super::{
    config::TwilioSettings,
    ingress::signature::compute_signature,
    signing::{differences, SigningFacts},
};
use crate::{
    bus::amqp::tap::Tap,
    configuration::Settings,
    output::{pretty_json, say},
    publisher::{Delivery, DELIVERY_HEADER},
};

/// How long to wait for a published event to arrive on RabbitMQ.
const ARRIVAL_WAIT: Duration = Duration::from_secs(15);

#[derive(Args)]
pub struct SimulateArgs {
    #[command(subcommand)]
    pub kind: SimulateKind,
}

#[derive(Subcommand)]
pub enum SimulateKind {
    /// An inbound SMS (or MMS with --media-url) to /webhooks/twilio/sms.
    Sms {
        /// Sender, +E.164 (or whatsapp:+E.164).
        #[arg(long, default_value = "+14155550100")]
        from: String,
        /// Our receiving number; defaults to TWILIO_PHONE_NUMBER.
        #[arg(long)]
        to: Option<String>,
        /// Message text.
        #[arg(long, default_value = "Hello from the simulator")]
        body: String,
        /// Media URL to attach (repeatable).
        #[arg(long = "media-url")]
        media_urls: Vec<String>,
        /// Where the service listens; defaults to http://127.0.0.1:$PORT.
        #[arg(long)]
        url: Option<String>,
        /// MessageSid to use; random by default. Repeat one within DEDUPE_TTL_SECONDS to see
        /// the duplicate answered but not published again.
        #[arg(long)]
        message_sid: Option<String>,
    },
}

pub async fn run(settings: &Settings, args: SimulateArgs) -> anyhow::Result<()> {
    let SimulateKind::Sms {
        from,
        to,
        body,
        media_urls,
        url,
        message_sid,
    } = args.kind;
    let twilio = TwilioSettings::from_environment(&settings.environment, settings.app_env)?;
    let service = url
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", settings.port))
        .trim_end_matches('/')
        .to_owned();
    let path = "/webhooks/twilio/sms";
    // The service checks the signature against PUBLIC_BASE_URL when set, else its own address.
    let signed_url = match &settings.public_base_url {
        Some(base) => format!("{}{path}", base.as_str().trim_end_matches('/')),
        None => format!("{service}{path}"),
    };
    let message_sid = message_sid.unwrap_or_else(|| format!("SM{}", uuid::Uuid::new_v4().simple()));
    let to = to
        .or_else(|| twilio.phone_number.clone())
        .unwrap_or_else(|| "+15005550006".to_owned());
    let account_sid = twilio
        .account_sid
        .clone()
        .unwrap_or_else(|| "AC00000000000000000000000000000000".to_owned());

    let mut params: Vec<(String, String)> = vec![
        ("MessageSid".into(), message_sid.clone()),
        ("SmsMessageSid".into(), message_sid.clone()),
        ("AccountSid".into(), account_sid),
        ("From".into(), from),
        ("To".into(), to),
        ("Body".into(), body),
        ("NumMedia".into(), media_urls.len().to_string()),
        ("NumSegments".into(), "1".into()),
        ("SmsStatus".into(), "received".into()),
        ("ApiVersion".into(), "2010-04-01".into()),
    ];
    for (i, media) in media_urls.iter().enumerate() {
        params.push((format!("MediaUrl{i}"), media.clone()));
        params.push((format!("MediaContentType{i}"), "image/jpeg".into()));
    }
    if let Some(service_sid) = &twilio.messaging_service_sid {
        params.push(("MessagingServiceSid".into(), service_sid.clone()));
    }
    let signature = compute_signature(twilio.auth_token.expose_secret(), &signed_url, &params);
    let form = serde_urlencoded::to_string(&params).context("encoding the form")?;

    // With RabbitMQ, listen before posting so the published envelope can be shown.
    let mut watcher = match &settings.bus.amqp_url {
        Some(url) => Some(
            Tap::bind(
                url.expose_secret(),
                &settings.bus.exchange,
                &crate::bus::routing_key(&settings.bus.prefix, crate::envelope::topics::INGRESS),
            )
            .await
            .context("binding a temporary queue to watch for the event")?,
        ),
        None => None,
    };

    let client = reqwest::Client::new();
    let response = client
        .post(format!("{service}{path}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", signature)
        .body(form)
        .send()
        .await
        .with_context(|| format!("cannot reach the service at {service} (is it running?)"))?;
    let status = response.status();
    let delivery = response
        .headers()
        .get(DELIVERY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.unwrap_or_default();
    say(format_args!("POST {service}{path} -> {status}"))?;
    if status == StatusCode::FORBIDDEN {
        let local = SigningFacts::new(&twilio, settings.public_base_url.as_ref());
        explain_refusal(&client, settings, &service, path, &local).await?;
        anyhow::bail!("the service refused the signature (403)");
    }
    if !status.is_success() {
        say(&text)?;
        anyhow::bail!("the service rejected the webhook ({status})");
    }

    let message_id = format!("twilio:{message_sid}");
    if delivery.as_deref() == Some(Delivery::Duplicate.as_str()) {
        say(format_args!(
            "duplicate, not published again: {message_sid} was accepted within the last \
             DEDUPE_TTL_SECONDS, as a retry from Twilio would be"
        ))?;
        return Ok(());
    }
    if delivery.as_deref() == Some(Delivery::Outboxed.as_str()) {
        say(format_args!(
            "stored in the service's outbox: the broker did not confirm in time; {message_id} \
             is published when it does (see /readyz)"
        ))?;
        return Ok(());
    }

    if let Some(watcher) = watcher.as_mut() {
        let (routing_key, body) = wait_for(watcher, &message_id, ARRIVAL_WAIT)
            .await
            .with_context(|| {
                format!(
                    "the service published {message_id}, but it did not arrive on exchange {:?} \
                     within {ARRIVAL_WAIT:?}: does the service use the same AMQP_URL, \
                     AMQP_EXCHANGE and BUS_PREFIX as this shell?",
                    settings.bus.exchange
                )
            })?;
        say(format_args!(
            "published on {routing_key}:\n{}",
            pretty_json(&body)
        ))?;
        return Ok(());
    }

    let mut request = client
        .get(format!("{service}/_debug/events"))
        .query(&[("messageId", message_id.as_str())]);
    if let Some(token) = &settings.debug_token {
        request = request.bearer_auth(token.expose_secret());
    }
    let response = request.send().await.context("reading /_debug/events")?;
    if response.status() == StatusCode::NOT_FOUND {
        anyhow::bail!(
            "the service published {message_id} to RabbitMQ, not to an embedded bus: set the \
             service's AMQP_URL in this shell (or in .env) to see the envelope"
        );
    }
    let events: serde_json::Value = response
        .error_for_status()
        .context("reading /_debug/events (set the service's DEBUG_TOKEN in this shell)")?
        .json()
        .await
        .context("reading /_debug/events")?;
    match events["events"].as_array().and_then(|e| e.last()) {
        Some(event) => say(format_args!(
            "published on {}:\n{}",
            event["routingKey"].as_str().unwrap_or("?"),
            serde_json::to_string_pretty(&event["body"])?
        ))?,
        None => say("(not on the embedded bus yet: it may still be in the outbox)")?,
    }
    Ok(())
}

/// After a 403: compares this shell's signing configuration with the service's and says what
/// differs (or why it cannot tell).
async fn explain_refusal(
    client: &reqwest::Client,
    settings: &Settings,
    service: &str,
    path: &str,
    local: &SigningFacts,
) -> anyhow::Result<()> {
    let mut request = client.get(format!("{service}/_debug/twilio"));
    if let Some(token) = &settings.debug_token {
        request = request.bearer_auth(token.expose_secret());
    }
    let response = request
        .send()
        .await
        .context("reading the service's /_debug/twilio")?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::UNAUTHORIZED => {
            say(
                "to say which setting differs, simulate reads /_debug/twilio: set the service's \
                 DEBUG_TOKEN in this shell (or in .env)",
            )?;
            return Ok(());
        }
        other => {
            say(format_args!(
                "/_debug/twilio answered {other} (APP_ENV=production without DEBUG_TOKEN?): \
                 compare TWILIO_AUTH_TOKEN and PUBLIC_BASE_URL of the service and this shell"
            ))?;
            return Ok(());
        }
    }
    let snapshot: serde_json::Value = response
        .json()
        .await
        .context("reading the service's /_debug/twilio")?;
    let service_facts: SigningFacts = serde_json::from_value(snapshot["twilio"]["signing"].clone())
        .context("the service's /_debug/twilio has no signing facts (an older version?)")?;
    let found = differences(local, &service_facts, service, path);
    if found.is_empty() {
        say(
            "this shell and the service agree on TWILIO_AUTH_TOKEN and PUBLIC_BASE_URL; the \
             service's warning \"webhook rejected: X-Twilio-Signature does not match\" shows the \
             URL it checked",
        )?;
    }
    for difference in found {
        say(difference)?;
    }
    Ok(())
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
