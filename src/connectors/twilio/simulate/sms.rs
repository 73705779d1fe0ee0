//! `ingress-egress simulate sms`: signs a sample inbound-SMS webhook exactly as Twilio would,
//! posts it to a running service and shows the envelope it published (see [`super::watch`]).
//!
//! It signs with its own configuration (environment and `.env`, like the service). When the
//! service refuses the signature, it reads the service's non-secret signing facts from
//! `/_debug/twilio` and says which setting differs ([`differences`]). The webhook's
//! `X-Ingress-Delivery` answer says whether the event was published, stored in the outbox or a
//! duplicate that was not published again.
//!
//! Output goes through [`say`]: a reader that goes away (`simulate … | head`) ends the command
//! quietly instead of a panic.

use anyhow::Context;
use clap::Args;
use reqwest::StatusCode;
use secrecy::ExposeSecret;

use super::watch::Watch;
use crate::{
    configuration::Settings,
    connectors::twilio::{
        config::TwilioSettings,
        ingress::{envelope::message_id, signature::compute_signature},
        shared::CONNECTOR,
        signing::{differences, SigningFacts},
    },
    output::say,
    publisher::{Delivery, DELIVERY_HEADER},
};

#[derive(Args)]
pub struct SmsArgs {
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
    /// MessageSid to use; random by default. Repeat one within DEDUPE_TTL_SECONDS to see the
    /// duplicate answered but not published again.
    #[arg(long)]
    message_sid: Option<String>,
}

pub async fn run(settings: &Settings, args: SmsArgs) -> anyhow::Result<()> {
    let SmsArgs {
        from,
        to,
        body,
        media_urls,
        url,
        message_sid,
    } = args;
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
    let mut watch = Watch::start(settings).await?;

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

    let message_id = message_id(&message_sid);
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
    watch.show(settings, &service, &message_id).await
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
    let service_facts: SigningFacts =
        serde_json::from_value(snapshot[CONNECTOR]["signing"].clone())
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
