//! `ingress-egress simulate sms`: signs a sample inbound-SMS webhook exactly as Twilio would,
//! posts it to a running service and shows the envelope it published (embedded bus) or where it
//! went (RabbitMQ).

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use secrecy::ExposeSecret;

use super::{config::TwilioSettings, ingress::signature::compute_signature};
use crate::{bus::amqp::tap::Tap, configuration::Settings};

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
        /// MessageSid to use (repeat one to see dedupe); random by default.
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
    let text = response.text().await.unwrap_or_default();
    println!("POST {service}{path} -> {status}\n{text}\n");
    if !status.is_success() {
        anyhow::bail!("the service rejected the webhook");
    }

    let message_id = format!("twilio:{message_sid}");
    if let Some(watcher) = watcher.as_mut() {
        let (routing_key, body) = wait_for(watcher, &message_id, Duration::from_secs(15))
            .await
            .with_context(|| format!("{message_id} did not appear on the bus within 15 s (is the broker up? see /readyz)"))?;
        println!("published on {routing_key}:\n{}", pretty(&body));
        return Ok(());
    }

    let mut request = client
        .get(format!("{service}/_debug/events"))
        .query(&[("messageId", message_id.as_str())]);
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
    match events["events"].as_array().and_then(|e| e.last()) {
        Some(event) => println!(
            "published on {}:\n{}",
            event["routingKey"].as_str().unwrap_or("?"),
            serde_json::to_string_pretty(&event["body"])?
        ),
        None => println!("(not on the embedded bus yet: it may still be in the outbox)"),
    }
    Ok(())
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
