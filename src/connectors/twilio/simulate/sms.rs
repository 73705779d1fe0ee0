//! `ingress-egress simulate sms`: signs a sample inbound-SMS webhook exactly as Twilio would,
//! posts it to a running service and shows the envelope it published (see [`super::watch`]).

use anyhow::Context;
use clap::Args;
use secrecy::ExposeSecret;

use super::watch::Watch;
use crate::{
    configuration::Settings,
    connectors::twilio::{
        config::TwilioSettings,
        ingress::{envelope::message_id, signature::compute_signature},
    },
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
    /// MessageSid to use (repeat one to see dedupe); random by default.
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
    let text = response.text().await.unwrap_or_default();
    println!("POST {service}{path} -> {status}\n{text}\n");
    if !status.is_success() {
        anyhow::bail!("the service rejected the webhook");
    }

    watch
        .show(settings, &service, &message_id(&message_sid))
        .await
}
