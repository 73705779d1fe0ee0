//! Programmable Messaging inbound SMS/MMS/WhatsApp webhooks → `InternalEventV2`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Map;
use utoipa::{IntoParams, ToSchema};

use super::{context::IngressContext, envelope::InboundChat, webhook::FormParams};
use crate::{
    connectors::twilio::{
        address::messaging_channel_type,
        opt_out::{senders_reached, Keyword},
    },
    envelope::{InternalEventV2, Media},
    error::ApiError,
};

/// The most media Twilio attaches to one message.
pub(crate) const MAX_MEDIA: usize = 10;

/// The fields Twilio posts for an incoming message (documentation of the form; the handler
/// reads the parameters directly so unknown fields are kept in `rawPlatformPayload`).
#[derive(Serialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "PascalCase")]
#[schema(example = json!({
    "MessageSid": "SM0123456789abcdef0123456789abcdef",
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "MessagingServiceSid": "MG0123456789abcdef0123456789abcdef",
    "From": "+14155550100",
    "To": "+15005550006",
    "Body": "Hello from my phone",
    "NumMedia": "0",
    "NumSegments": "1",
    "FromCountry": "US",
    "ApiVersion": "2010-04-01"
}))]
pub struct InboundSmsForm {
    pub message_sid: String,
    pub account_sid: String,
    pub messaging_service_sid: Option<String>,
    /// Sender: `+E.164`, or `whatsapp:+E.164` for WhatsApp.
    pub from: String,
    /// Our receiving number.
    pub to: String,
    pub body: Option<String>,
    pub num_media: Option<String>,
    pub num_segments: Option<String>,
    /// `MediaUrl0` … `MediaUrl9` and `MediaContentType0` … carry MMS media.
    #[serde(rename = "MediaUrl0")]
    pub media_url0: Option<String>,
    #[serde(rename = "MediaContentType0")]
    pub media_content_type0: Option<String>,
    /// WhatsApp sender's profile name.
    pub profile_name: Option<String>,
    pub from_country: Option<String>,
    pub api_version: Option<String>,
}

/// An inbound STOP (or START) changes what egress may send to the sender: remember it for the
/// number it reached and its Messaging Service. Best effort: Twilio enforces opt-outs anyway.
pub(crate) async fn remember_consent(twilio: &IngressContext, params: &FormParams) {
    let (Some(from), Some(to), Some(body)) = (
        params.non_empty("From"),
        params.non_empty("To"),
        params.get("Body"),
    ) else {
        return;
    };
    let Some(keyword) = Keyword::of(body) else {
        return;
    };
    let senders = senders_reached(to, params.non_empty("MessagingServiceSid"));
    match twilio.opt_outs().apply(keyword, &senders, from).await {
        Ok(()) => tracing::info!(?keyword, "recipient consent keyword remembered"),
        Err(error) => tracing::warn!(%error, "consent keyword not remembered"),
    }
}

/// Builds the envelope for an inbound message webhook.
pub fn inbound_message_envelope(
    params: &FormParams,
    received_at: DateTime<Utc>,
) -> Result<InternalEventV2, ApiError> {
    let message_sid = params
        .non_empty("MessageSid")
        .or_else(|| params.non_empty("SmsMessageSid"))
        .or_else(|| params.non_empty("SmsSid"))
        .ok_or_else(|| ApiError::BadRequest("missing form parameter MessageSid".to_owned()))?;
    let from = params.require("From")?;
    let to = params.require("To")?;
    let media = media_from_params(params)?;
    let channel_type = messaging_channel_type(from, !media.is_empty());

    let mut identity_metadata = Map::new();
    identity_metadata.insert("channelType".into(), channel_type.into());
    params.copy_into(
        &mut identity_metadata,
        &[
            ("FromCountry", "fromCountry"),
            ("FromState", "fromState"),
            ("FromCity", "fromCity"),
            ("FromZip", "fromZip"),
            ("WaId", "waId"),
            ("AccountSid", "accountSid"),
        ],
    );

    let mut twilio = Map::new();
    twilio.insert("from".into(), to.into());
    if let Some(service) = params.non_empty("MessagingServiceSid") {
        twilio.insert("messagingServiceSid".into(), service.into());
    }

    let mut provenance = Map::new();
    provenance.insert("webhook".into(), "messaging.inbound".into());
    provenance.insert("numSegments".into(), params.non_empty("NumSegments").into());

    Ok(InboundChat {
        message_sid,
        reply_channel: from,
        sender: from,
        display_name: params.non_empty("ProfileName").map(str::to_owned),
        identity_metadata,
        reply_via: twilio,
        text: params.get("Body").unwrap_or_default().to_owned(),
        media,
        raw: params.to_json(),
        provenance,
    }
    .into_envelope(received_at))
}

fn media_from_params(params: &FormParams) -> Result<Vec<Media>, ApiError> {
    let count = match params.non_empty("NumMedia") {
        None => 0,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest("NumMedia is not a number".to_owned()))?,
    };
    if count > MAX_MEDIA {
        return Err(ApiError::BadRequest(format!(
            "NumMedia {count} exceeds Twilio's maximum of {MAX_MEDIA}"
        )));
    }
    (0..count)
        .map(|i| {
            let url = params.non_empty(&format!("MediaUrl{i}")).ok_or_else(|| {
                ApiError::BadRequest(format!("NumMedia is {count} but MediaUrl{i} is missing"))
            })?;
            Ok(Media {
                url: Some(url.to_owned()),
                sid: url
                    .rsplit('/')
                    .next()
                    .filter(|s| s.starts_with("ME"))
                    .map(str::to_owned),
                content_type: params
                    .non_empty(&format!("MediaContentType{i}"))
                    .map(str::to_owned),
                size: None,
                filename: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::stable_correlation_id;
    use serde_json::json;

    fn form(pairs: &[(&str, &str)]) -> FormParams {
        FormParams::from_pairs(pairs)
    }

    #[test]
    fn an_sms_becomes_a_chat_message_envelope() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .to_utc();
        let params = form(&[
            ("MessageSid", "SM11111111111111111111111111111111"),
            ("AccountSid", "AC00000000000000000000000000000001"),
            ("MessagingServiceSid", "MG00000000000000000000000000000001"),
            ("From", "+14155550100"),
            ("To", "+15005550006"),
            ("Body", "hello there"),
            ("NumMedia", "0"),
            ("FromCountry", "US"),
        ]);
        let event = inbound_message_envelope(&params, at).unwrap();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["v"], "2");
        assert_eq!(json["type"], "chat.message.v1");
        assert_eq!(json["ingress"]["ingressAt"], "2026-01-02T03:04:05Z");
        assert_eq!(json["ingress"]["channel"], "+14155550100");
        assert_eq!(json["ingress"]["source"], "ingress.twilio");
        assert_eq!(json["identity"]["external"]["id"], "+14155550100");
        assert_eq!(
            json["identity"]["external"]["metadata"]["channelType"],
            "sms"
        );
        assert_eq!(
            json["identity"]["external"]["metadata"]["fromCountry"],
            "US"
        );
        assert_eq!(json["egress"]["destination"], "internal.egress.v1");
        assert_eq!(json["egress"]["channel"], "+14155550100");
        assert_eq!(json["egress"]["metadata"]["twilio"]["from"], "+15005550006");
        assert_eq!(
            json["egress"]["metadata"]["twilio"]["messagingServiceSid"],
            "MG00000000000000000000000000000001"
        );
        assert_eq!(json["message"]["id"], "SM11111111111111111111111111111111");
        assert_eq!(json["message"]["role"], "user");
        assert_eq!(json["message"]["text"], "hello there");
        assert_eq!(json["message"]["rawPlatformPayload"]["Body"], "hello there");
        assert_eq!(
            json["routing"],
            json!({"stage": "initial", "slip": [], "history": []})
        );
        assert_eq!(
            event.correlation_id,
            stable_correlation_id("twilio:SM11111111111111111111111111111111")
        );
    }

    #[test]
    fn mms_media_and_whatsapp_senders_are_recognised() {
        let params = form(&[
            ("MessageSid", "MM1"),
            ("From", "whatsapp:+14155550100"),
            ("To", "whatsapp:+15005550006"),
            ("NumMedia", "2"),
            (
                "MediaUrl0",
                "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
            ),
            ("MediaContentType0", "image/jpeg"),
            (
                "MediaUrl1",
                "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME2",
            ),
            ("MediaContentType1", "video/mp4"),
            ("ProfileName", "Ada"),
        ]);
        let event = inbound_message_envelope(&params, Utc::now()).unwrap();
        let message = event.message.unwrap();
        assert_eq!(message.media.len(), 2);
        assert_eq!(message.media[1].content_type.as_deref(), Some("video/mp4"));
        assert_eq!(message.media[0].sid.as_deref(), Some("ME1"));
        assert_eq!(event.identity.external.display_name.as_deref(), Some("Ada"));
        assert_eq!(event.identity.external.metadata["channelType"], "whatsapp");
        assert_eq!(event.ingress.channel, "whatsapp:+14155550100");
    }

    #[test]
    fn malformed_webhooks_are_rejected_with_the_reason() {
        let missing = form(&[("From", "+1"), ("To", "+2")]);
        assert!(inbound_message_envelope(&missing, Utc::now())
            .unwrap_err()
            .to_string()
            .contains("MessageSid"));
        let bad_media = form(&[
            ("MessageSid", "SM1"),
            ("From", "+1"),
            ("To", "+2"),
            ("NumMedia", "1"),
        ]);
        assert!(inbound_message_envelope(&bad_media, Utc::now())
            .unwrap_err()
            .to_string()
            .contains("MediaUrl0"));
        let huge = form(&[
            ("MessageSid", "SM1"),
            ("From", "+1"),
            ("To", "+2"),
            ("NumMedia", "99999"),
        ]);
        assert!(inbound_message_envelope(&huge, Utc::now()).is_err());
    }
}
