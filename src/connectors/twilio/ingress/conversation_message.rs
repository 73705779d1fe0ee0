//! An `onMessageAdded` event (form webhook or Event Streams alike) → `InternalEventV2`: pure
//! functions, no I/O. The reply address is the Conversation SID.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{envelope::InboundChat, webhook::FormParams};
use crate::{
    connectors::twilio::address::{channel_type_of, messaging_channel_type},
    envelope::{InternalEventV2, Media},
    error::ApiError,
};

/// `identity.external.metadata.channelType` from the Conversations `Source` (SMS, WHATSAPP,
/// SDK, API, …), falling back to the author's address when Twilio does not say.
pub fn channel_type(source: Option<&str>, author: &str, has_media: bool) -> String {
    match source.map(str::to_ascii_uppercase).as_deref() {
        Some("SMS") | Some("MMS") => messaging_channel_type(author, has_media).to_owned(),
        Some("WHATSAPP") => "whatsapp".to_owned(),
        Some("SDK") | Some("API") | Some("CHAT") => "chat".to_owned(),
        Some(other) if !other.is_empty() => other.to_ascii_lowercase(),
        _ => channel_type_of(author, has_media).to_owned(),
    }
}

/// Builds the envelope of an `onMessageAdded` event (form webhook or Event Streams alike).
pub fn message_added_envelope(
    params: &FormParams,
    received_at: DateTime<Utc>,
) -> Result<InternalEventV2, ApiError> {
    let conversation_sid = params.require("ConversationSid")?;
    let message_sid = params.require("MessageSid")?;
    let author = params.require("Author")?;
    let media = media_from_json(params.non_empty("Media"))?;
    let source = params.non_empty("Source");
    let channel_type = channel_type(source, author, !media.is_empty());

    let mut identity_metadata = Map::new();
    identity_metadata.insert("channelType".into(), channel_type.into());
    identity_metadata.insert("conversationSid".into(), conversation_sid.into());
    params.copy_into(
        &mut identity_metadata,
        &[
            ("ParticipantSid", "participantSid"),
            ("ClientIdentity", "clientIdentity"),
            ("Source", "source"),
            ("AccountSid", "accountSid"),
        ],
    );

    let mut egress_twilio = Map::new();
    egress_twilio.insert("conversationSid".into(), conversation_sid.into());
    params.copy_into(
        &mut egress_twilio,
        &[
            ("ChatServiceSid", "chatServiceSid"),
            ("MessagingServiceSid", "messagingServiceSid"),
        ],
    );

    let mut twilio_metadata = Map::new();
    twilio_metadata.insert("webhook".into(), "conversations.onMessageAdded".into());
    twilio_metadata.insert("conversationSid".into(), conversation_sid.into());
    twilio_metadata.insert("messageSid".into(), message_sid.into());
    params.copy_into(
        &mut twilio_metadata,
        &[
            ("ParticipantSid", "participantSid"),
            ("ChatServiceSid", "chatServiceSid"),
            ("Source", "source"),
            ("DateCreated", "dateCreated"),
        ],
    );
    if let Some(index) = params.non_empty("Index") {
        let value = index
            .parse::<u64>()
            .map_or_else(|_| Value::from(index), Value::from);
        twilio_metadata.insert("index".into(), value);
    }
    if let Some(attributes) = params.non_empty("Attributes") {
        // Twilio sends a JSON object; keep anything else as the string it is.
        let value =
            serde_json::from_str::<Value>(attributes).unwrap_or_else(|_| Value::from(attributes));
        twilio_metadata.insert("attributes".into(), value);
    }

    Ok(InboundChat {
        message_sid,
        reply_channel: conversation_sid,
        sender: author,
        display_name: None,
        identity_metadata,
        reply_via: egress_twilio,
        text: params.get("Body").unwrap_or_default().to_owned(),
        media,
        raw: params.to_json(),
        provenance: twilio_metadata,
    }
    .into_envelope(received_at))
}

/// The most media one Conversations message carries.
const MAX_MEDIA: usize = 10;

/// Conversations `Media`: a JSON list of `{Sid, Filename, ContentType, Size, Category}`.
fn media_from_json(media: Option<&str>) -> Result<Vec<Media>, ApiError> {
    let Some(text) = media else {
        return Ok(Vec::new());
    };
    let items: Vec<Value> = serde_json::from_str(text)
        .map_err(|e| ApiError::BadRequest(format!("Media is not a JSON list: {e}")))?;
    if items.len() > MAX_MEDIA {
        return Err(ApiError::BadRequest(format!(
            "{} media items exceed the maximum of {MAX_MEDIA}",
            items.len()
        )));
    }
    items
        .iter()
        .map(|item| {
            let field = |names: &[&str]| {
                names
                    .iter()
                    .find_map(|name| item.get(*name))
                    .filter(|value| !value.is_null())
            };
            let text = |names: &[&str]| {
                field(names).and_then(|value| match value {
                    Value::String(s) if !s.is_empty() => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
            };
            if !item.is_object() {
                return Err(ApiError::BadRequest(
                    "Media items must be JSON objects".to_owned(),
                ));
            }
            // Webhooks say `Sid`; Event Streams' `message.added` says `MediaSid`.
            let sid = text(&["Sid", "sid", "MediaSid"]);
            let url = text(&["Url", "url"]);
            if sid.is_none() && url.is_none() {
                return Err(ApiError::BadRequest(
                    "a Media item has neither Sid nor Url".to_owned(),
                ));
            }
            Ok(Media {
                url,
                sid,
                content_type: text(&["ContentType", "contentType", "content_type"]),
                size: field(&["Size", "size"]).and_then(|value| match value {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                }),
                filename: text(&["Filename", "filename", "FileName"]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::stable_correlation_id;

    fn form(pairs: &[(&str, &str)]) -> FormParams {
        FormParams::from_pairs(pairs)
    }

    fn message(extra: &[(&str, &str)]) -> FormParams {
        let mut pairs = vec![
            ("EventType", "onMessageAdded"),
            ("ConversationSid", "CH1"),
            ("MessageSid", "IM1"),
            ("ParticipantSid", "MB1"),
            ("ChatServiceSid", "IS1"),
            ("MessagingServiceSid", "MG1"),
            ("Author", "+14155550100"),
            ("Body", "hello"),
            ("Index", "3"),
            ("Attributes", "{\"importance\":\"high\"}"),
            ("Source", "SMS"),
        ];
        pairs.extend_from_slice(extra);
        form(&pairs)
    }

    #[test]
    fn on_message_added_becomes_an_envelope_addressed_to_the_conversation() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .to_utc();
        let event = message_added_envelope(&message(&[]), at).unwrap();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "chat.message.v1");
        assert_eq!(json["ingress"]["channel"], "CH1");
        assert_eq!(json["egress"]["channel"], "CH1");
        assert_eq!(json["egress"]["destination"], "internal.egress.v1");
        assert_eq!(
            json["egress"]["metadata"]["twilio"]["conversationSid"],
            "CH1"
        );
        assert_eq!(
            json["egress"]["metadata"]["twilio"]["messagingServiceSid"],
            "MG1"
        );
        assert_eq!(json["identity"]["external"]["id"], "+14155550100");
        let meta = &json["identity"]["external"]["metadata"];
        assert_eq!(meta["channelType"], "sms");
        assert_eq!(meta["participantSid"], "MB1");
        assert_eq!(meta["conversationSid"], "CH1");
        assert_eq!(json["message"]["id"], "IM1");
        assert_eq!(json["message"]["text"], "hello");
        assert_eq!(json["message"]["rawPlatformPayload"]["Index"], "3");
        assert_eq!(json["metadata"]["twilio"]["index"], 3);
        assert_eq!(
            json["metadata"]["twilio"]["attributes"]["importance"],
            "high"
        );
        assert_eq!(json["metadata"]["twilio"]["participantSid"], "MB1");
        assert_eq!(event.correlation_id, stable_correlation_id("twilio:IM1"));
    }

    #[test]
    fn media_and_channel_types_are_mapped() {
        let params = message(&[(
            "Media",
            r#"[{"Sid":"ME1","Filename":"a.jpg","ContentType":"image/jpeg","Size":12,"Category":"media"}]"#,
        )]);
        let event = message_added_envelope(&params, Utc::now()).unwrap();
        let media = &event.message.as_ref().unwrap().media;
        assert_eq!(media.len(), 1);
        assert_eq!(media[0].sid.as_deref(), Some("ME1"));
        assert_eq!(media[0].content_type.as_deref(), Some("image/jpeg"));
        assert_eq!(media[0].size, Some(12));
        assert_eq!(media[0].filename.as_deref(), Some("a.jpg"));
        assert_eq!(event.identity.external.metadata["channelType"], "mms");

        assert_eq!(
            channel_type(Some("WHATSAPP"), "whatsapp:+1", true),
            "whatsapp"
        );
        assert_eq!(channel_type(Some("SDK"), "alice", false), "chat");
        assert_eq!(channel_type(Some("API"), "bot", false), "chat");
        assert_eq!(channel_type(None, "+1555", false), "sms");
        assert_eq!(channel_type(None, "whatsapp:+1555", false), "whatsapp");
        assert_eq!(channel_type(None, "alice", false), "chat");
        assert_eq!(channel_type(Some("EMAIL"), "a@b", false), "email");
    }

    #[test]
    fn malformed_messages_are_rejected() {
        for broken in [
            form(&[("MessageSid", "IM1"), ("Author", "a")]),
            form(&[("ConversationSid", "CH1"), ("Author", "a")]),
            form(&[("ConversationSid", "CH1"), ("MessageSid", "IM1")]),
            message(&[("Media", "not json")]),
            message(&[("Media", "[1]")]),
            message(&[("Media", "[{}]")]),
        ] {
            assert!(message_added_envelope(&broken, Utc::now()).is_err());
        }
        // Attributes that are not JSON are kept as text rather than losing the message.
        let odd = form(&[
            ("ConversationSid", "CH1"),
            ("MessageSid", "IM1"),
            ("Author", "alice"),
            ("Attributes", "not json"),
        ]);
        let event = message_added_envelope(&odd, Utc::now()).unwrap();
        assert_eq!(event.metadata.unwrap()["twilio"]["attributes"], "not json");
    }
}
