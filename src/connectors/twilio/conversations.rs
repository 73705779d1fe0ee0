//! Twilio Conversations post-event webhooks → `InternalEventV2`, status events and auto-join.
//!
//! - `onMessageAdded`: a chat message envelope whose reply address is the Conversation SID;
//!   messages the bot wrote itself are not published (no echo loops).
//! - `onConversationAdded`, `onParticipantAdded`: the bot joins the conversation (in the
//!   background, see [`super::participants`]) when `TWILIO_IDENTITY` is set.
//! - `onDeliveryUpdated`: a status event (see [`super::status`]).
//! - anything else: acknowledged, counted in `ignored_events_total`, not published.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{
    inbound::InboundChat,
    routes::{publish_envelope, Outcome},
    sms, status,
    webhook::FormParams,
    TwilioConnector,
};
use crate::{
    envelope::{InternalEventV2, Media},
    error::ApiError,
};

/// `Attributes.origin` egress may stamp on what it posts; such messages are never republished.
pub const OWN_ORIGIN: &str = "ingress-egress";
/// The `ignored_events_total{event_type}` label of the bot's own messages.
pub const OWN_MESSAGE_LABEL: &str = "onMessageAdded.own";

/// The fields Twilio posts for `onMessageAdded` (documentation; other event types carry the
/// fields Twilio documents for them, and every field is kept in `rawPlatformPayload`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
#[schema(example = json!({
    "EventType": "onMessageAdded",
    "AccountSid": "AC00000000000000000000000000000001",
    "ChatServiceSid": "IS00000000000000000000000000000001",
    "ConversationSid": "CH00000000000000000000000000000001",
    "MessagingServiceSid": "MG00000000000000000000000000000001",
    "MessageSid": "IM8ff247c0e8fdb09bd72111fd9491283f",
    "ParticipantSid": "MB71d53344bb55f6732abde05327b5cddf",
    "Author": "+14155550100",
    "Body": "Hi, I need help with order #1234 & a refund",
    "Index": "3",
    "Attributes": "{}",
    "Source": "SMS",
    "DateCreated": "2024-05-14T09:30:01.120Z",
    "RetryCount": "0"
}))]
pub struct ConversationsEventForm {
    /// onMessageAdded, onConversationAdded, onParticipantAdded, onDeliveryUpdated, … (others
    /// are acknowledged and ignored).
    pub event_type: String,
    pub account_sid: String,
    pub chat_service_sid: Option<String>,
    pub conversation_sid: String,
    pub messaging_service_sid: Option<String>,
    pub message_sid: Option<String>,
    pub participant_sid: Option<String>,
    /// The message author: a phone/WhatsApp address or a chat identity.
    pub author: Option<String>,
    pub body: Option<String>,
    pub index: Option<String>,
    /// JSON object, as a string.
    pub attributes: Option<String>,
    /// JSON list of `{Sid, Filename, ContentType, Size, Category}`, as a string.
    pub media: Option<String>,
    /// SMS, WHATSAPP, SDK, API, …
    pub source: Option<String>,
    /// onParticipantAdded: the chat identity of the new participant.
    pub identity: Option<String>,
    /// onDeliveryUpdated: sent, delivered, read, undelivered, failed.
    pub status: Option<String>,
    /// onDeliveryUpdated: Twilio error code, `0` when none.
    pub error_code: Option<String>,
    pub date_created: Option<String>,
    pub retry_count: Option<String>,
}

/// Handles one verified Conversations webhook.
pub(crate) async fn handle_event(
    twilio: &TwilioConnector,
    params: &FormParams,
) -> Result<Outcome, ApiError> {
    let event_type = params.require("EventType")?;
    match event_type {
        "onMessageAdded" => on_message_added(twilio, params, Utc::now(), None).await,
        "onConversationAdded" => {
            let conversation = params.require("ConversationSid")?;
            twilio.auto_joiner().ensure_joined(conversation);
            Ok(Outcome::Ignored)
        }
        "onParticipantAdded" => {
            let conversation = params.require("ConversationSid")?;
            let joiner = twilio.auto_joiner();
            match (params.non_empty("Identity"), joiner.identity()) {
                (Some(added), Some(bot)) if added == bot => joiner.mark_joined(conversation),
                _ => joiner.ensure_joined(conversation),
            }
            Ok(Outcome::Ignored)
        }
        "onDeliveryUpdated" => {
            let event = status::from_conversation_delivery(
                params,
                twilio.settings().identity.as_deref(),
                Utc::now(),
            )?;
            status::publish_status(twilio, &event).await
        }
        other => {
            count_ignored(twilio, other);
            tracing::debug!(event_type = other, "conversations event ignored");
            Ok(Outcome::Ignored)
        }
    }
}

/// Counts an event acknowledged without publishing.
pub(crate) fn count_ignored(twilio: &TwilioConnector, event_type: &str) {
    let label: String = event_type.chars().take(64).collect();
    twilio
        .metrics()
        .ignored_events
        .with_label_values(&[label.as_str()])
        .inc();
}

/// `onMessageAdded` (from the form webhook or Event Streams): publish unless the bot wrote it.
/// `via` names a non-webhook origin (e.g. `event_streams`) for `metadata.twilio.via`.
pub(crate) async fn on_message_added(
    twilio: &TwilioConnector,
    params: &FormParams,
    received_at: DateTime<Utc>,
    via: Option<Map<String, Value>>,
) -> Result<Outcome, ApiError> {
    let identity = twilio.settings().identity.as_deref();
    if is_own_message(params, identity) {
        if let Some(conversation) = params.non_empty("ConversationSid") {
            if params.non_empty("Author") == identity {
                // It posted here, so it is a participant.
                twilio.auto_joiner().mark_joined(conversation);
            }
        }
        count_ignored(twilio, OWN_MESSAGE_LABEL);
        tracing::debug!(
            message_sid = params.non_empty("MessageSid").unwrap_or_default(),
            "own conversations message not republished"
        );
        return Ok(Outcome::Ignored);
    }
    let mut envelope = message_added_envelope(params, received_at)?;
    if let Some(extra) = via {
        if let Some(Value::Object(twilio_meta)) = envelope
            .metadata
            .as_mut()
            .and_then(|metadata| metadata.get_mut("twilio"))
        {
            twilio_meta.extend(extra);
        }
    }
    publish_envelope(twilio, &envelope).await
}

/// Whether a message was written by the bot: its author is `TWILIO_IDENTITY`, or egress marked
/// it with `Attributes.origin == "ingress-egress"`.
pub fn is_own_message(params: &FormParams, bot_identity: Option<&str>) -> bool {
    if let (Some(author), Some(bot)) = (params.non_empty("Author"), bot_identity) {
        if author == bot {
            return true;
        }
    }
    params
        .non_empty("Attributes")
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .and_then(|attributes| {
            attributes
                .get("origin")
                .and_then(Value::as_str)
                .map(|origin| origin == OWN_ORIGIN)
        })
        .unwrap_or(false)
}

/// `identity.external.metadata.channelType` from the Conversations `Source` (SMS, WHATSAPP,
/// SDK, API, …), falling back to the author's address when Twilio does not say.
pub fn channel_type(source: Option<&str>, author: &str, has_media: bool) -> String {
    match source.map(str::to_ascii_uppercase).as_deref() {
        Some("SMS") | Some("MMS") => sms::channel_type_for_address(author, has_media).to_owned(),
        Some("WHATSAPP") => "whatsapp".to_owned(),
        Some("SDK") | Some("API") | Some("CHAT") => "chat".to_owned(),
        Some(other) if !other.is_empty() => other.to_ascii_lowercase(),
        _ if author.starts_with("whatsapp:") || author.starts_with('+') => {
            sms::channel_type_for_address(author, has_media).to_owned()
        }
        _ => "chat".to_owned(),
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

    #[test]
    fn the_bots_own_messages_are_recognised() {
        let bot = form(&[("Author", "ingress-bot"), ("Attributes", "{}")]);
        assert!(is_own_message(&bot, Some("ingress-bot")));
        assert!(!is_own_message(&bot, None));
        assert!(!is_own_message(&message(&[]), Some("ingress-bot")));
        let marked = form(&[
            ("Author", "system"),
            ("Attributes", r#"{"origin":"ingress-egress"}"#),
        ]);
        assert!(is_own_message(&marked, None));
    }
}
