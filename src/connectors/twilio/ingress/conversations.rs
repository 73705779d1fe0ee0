//! Twilio Conversations post-event webhooks → `InternalEventV2`, status events and auto-join.
//!
//! - `onMessageAdded`: a chat message envelope whose reply address is the Conversation SID;
//!   messages the bot wrote itself are not published (no echo loops).
//! - `onConversationAdded`, `onParticipantAdded`: the bot joins the conversation (in the
//!   background, see [`super::participants`]) when `TWILIO_IDENTITY` is set.
//! - `onDeliveryUpdated`: a status event (see [`super::status`]).
//! - pre-event webhooks (`onMessageAdd`, `onConversationAdd`, … — the names without "ed"),
//!   should one be pointed here: not used; answered 200 with an empty body, which lets the
//!   action proceed unchanged, and counted in `ignored_events_total`.
//! - anything else: acknowledged, counted in `ignored_events_total`, not published.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::{
    context::IngressContext,
    conversation_message::message_added_envelope,
    deadline::Deadline,
    publish::{publish_envelope, WebhookOutcome},
    status,
    webhook::FormParams,
};
use crate::{
    connectors::twilio::shared::{CONNECTOR, OWN_ORIGIN},
    error::ApiError,
};

/// The `ignored_events_total{event_type}` label of the bot's own messages.
pub const OWN_MESSAGE_LABEL: &str = "onMessageAdded.own";

/// The fields Twilio posts for `onMessageAdded` (documentation; other event types carry the
/// fields Twilio documents for them, and every field is kept in `rawPlatformPayload`).
#[derive(Serialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
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
    twilio: &IngressContext,
    params: &FormParams,
    deadline: Deadline,
) -> Result<WebhookOutcome, ApiError> {
    let event_type = params.require("EventType")?;
    match event_type {
        "onMessageAdded" => on_message_added(twilio, params, Utc::now(), None, deadline).await,
        "onConversationAdded" => {
            let conversation = params.require("ConversationSid")?;
            twilio.auto_joiner().ensure_joined(conversation);
            Ok(WebhookOutcome::Ignored)
        }
        "onParticipantAdded" => {
            let conversation = params.require("ConversationSid")?;
            let joiner = twilio.auto_joiner();
            match (params.non_empty("Identity"), joiner.identity()) {
                (Some(added), Some(bot)) if added == bot => joiner.mark_joined(conversation),
                _ => joiner.ensure_joined(conversation),
            }
            Ok(WebhookOutcome::Ignored)
        }
        "onDeliveryUpdated" => {
            let event = status::from_conversation_delivery(
                params,
                twilio.settings().identity.as_deref(),
                Utc::now(),
            )?;
            status::publish_status(twilio, &event, deadline).await
        }
        pre if is_pre_event(pre) => {
            count_ignored(twilio, pre);
            tracing::debug!(event_type = pre, "conversations pre-event answered empty");
            Ok(WebhookOutcome::PreEvent)
        }
        other => {
            count_ignored(twilio, other);
            tracing::debug!(event_type = other, "conversations event ignored");
            Ok(WebhookOutcome::Ignored)
        }
    }
}

/// Whether `event_type` names a pre-event webhook: Twilio names those after the action about to
/// happen (`onMessageAdd`, `onConversationUpdate`, `onParticipantRemove`, `onUserUpdate`), and
/// post-event webhooks after the action done (`onMessageAdded`, `onDeliveryUpdated`).
pub fn is_pre_event(event_type: &str) -> bool {
    event_type.len() > 2 && event_type.starts_with("on") && !event_type.ends_with("ed")
}

/// Counts an event acknowledged without publishing.
pub(crate) fn count_ignored(twilio: &IngressContext, event_type: &str) {
    let label: String = event_type.chars().take(64).collect();
    twilio
        .metrics()
        .ignored_events
        .with_label_values(&[CONNECTOR, label.as_str()])
        .inc();
}

/// `onMessageAdded` (from the form webhook or Event Streams): publish unless the bot wrote it.
/// `via` names a non-webhook origin (e.g. `event_streams`) for `metadata.twilio.via`.
pub(crate) async fn on_message_added(
    twilio: &IngressContext,
    params: &FormParams,
    received_at: DateTime<Utc>,
    via: Option<Map<String, Value>>,
    deadline: Deadline,
) -> Result<WebhookOutcome, ApiError> {
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
        return Ok(WebhookOutcome::Ignored);
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
    publish_envelope(twilio, &envelope, deadline).await
}

/// Whether a message was written by the bot, so that republishing it would start an echo loop:
/// - its author is `TWILIO_IDENTITY`, the author egress posts as; or
/// - its `Attributes` carry `origin: "ingress-egress"`, which egress stamps on every message it
///   posts. This is what recognises our messages posted without an author, which Twilio (and
///   Event Streams) report with the author `system`.
///
/// The author `system` alone is not ours: other REST clients, Studio flows and Twilio itself
/// post as `system` too, and those messages are published like any other. Only a message's
/// writer sets its attributes, so a participant who stamps our origin on their own message
/// silences nobody but themselves.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The author Twilio gives a message created through the REST API without an `Author`.
    const SYSTEM_AUTHOR: &str = "system";

    fn form(pairs: &[(&str, &str)]) -> FormParams {
        FormParams::from_pairs(pairs)
    }

    fn message(extra: &[(&str, &str)]) -> FormParams {
        let mut pairs = vec![
            ("ConversationSid", "CH1"),
            ("MessageSid", "IM1"),
            ("Author", "+14155550100"),
            ("Attributes", "{\"importance\":\"high\"}"),
        ];
        pairs.extend_from_slice(extra);
        form(&pairs)
    }

    #[test]
    fn the_bots_own_messages_are_recognised() {
        let bot = form(&[("Author", "ingress-bot"), ("Attributes", "{}")]);
        assert!(is_own_message(&bot, Some("ingress-bot")));
        assert!(!is_own_message(&bot, None));
        assert!(!is_own_message(&message(&[]), Some("ingress-bot")));
        let marked = form(&[
            ("Author", SYSTEM_AUTHOR),
            ("Attributes", r#"{"origin":"ingress-egress","key":"m-1#0"}"#),
        ]);
        assert!(is_own_message(&marked, None));
        assert!(is_own_message(&marked, Some("ingress-bot")));
    }

    #[test]
    fn other_peoples_system_messages_are_not_ours() {
        for attributes in ["{}", r#"{"origin":"studio"}"#, "not json", ""] {
            let system = form(&[("Author", SYSTEM_AUTHOR), ("Attributes", attributes)]);
            assert!(!is_own_message(&system, None), "{attributes}");
            assert!(
                !is_own_message(&system, Some("ingress-bot")),
                "{attributes}"
            );
        }
        // A bot identity of `system` would be a configuration mistake, but it is honoured.
        let system = form(&[("Author", SYSTEM_AUTHOR)]);
        assert!(is_own_message(&system, Some(SYSTEM_AUTHOR)));
    }

    #[test]
    fn pre_events_are_told_from_post_events() {
        for pre in [
            "onMessageAdd",
            "onMessageUpdate",
            "onMessageRemove",
            "onConversationAdd",
            "onConversationUpdate",
            "onConversationRemove",
            "onParticipantAdd",
            "onParticipantUpdate",
            "onParticipantRemove",
            "onUserUpdate",
        ] {
            assert!(is_pre_event(pre), "{pre}");
        }
        for post in [
            "onMessageAdded",
            "onMessageUpdated",
            "onConversationAdded",
            "onConversationStateUpdated",
            "onParticipantAdded",
            "onDeliveryUpdated",
            "onUserUpdated",
            "on",
            "",
            "somethingElse",
        ] {
            assert!(!is_pre_event(post), "{post}");
        }
    }
}
