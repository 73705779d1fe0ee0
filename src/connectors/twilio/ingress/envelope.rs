//! The one place an inbound Twilio chat message becomes an `InternalEventV2`, whichever webhook
//! (Messaging, Conversations, Event Streams) carried it.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::connectors::twilio::shared::{CONNECTOR, INGRESS_SOURCE, PLATFORM};
use crate::envelope::{
    stable_correlation_id, topics, Egress, ExternalIdentity, Identity, Ingress, InternalEventV2,
    Media, Message, Routing, CHAT_MESSAGE_V1, ENVELOPE_VERSION,
};
use crate::telemetry::trace_context::current_trace_id;

/// The bus `message_id` of a Twilio message: stable across webhook retries.
pub fn message_id(message_sid: &str) -> String {
    format!("twilio:{message_sid}")
}

/// The parts of an inbound message that differ between webhooks.
pub struct InboundChat<'a> {
    pub message_sid: &'a str,
    /// Where a reply goes: a Conversation SID or the sender's address.
    pub reply_channel: &'a str,
    /// The sender's address or Conversations identity.
    pub sender: &'a str,
    pub display_name: Option<String>,
    /// `identity.external.metadata` (channelType, participantSid, fromCountry …).
    pub identity_metadata: Map<String, Value>,
    /// `egress.metadata.twilio`: what a reply needs (from, messagingServiceSid …).
    pub reply_via: Map<String, Value>,
    pub text: String,
    pub media: Vec<Media>,
    /// Every webhook field, as received.
    pub raw: Value,
    /// `metadata.twilio`: provenance (which webhook, SIDs, index …).
    pub provenance: Map<String, Value>,
}

impl InboundChat<'_> {
    /// The envelope, in the trace of the current span (the webhook's request).
    pub fn into_envelope(self, received_at: DateTime<Utc>) -> InternalEventV2 {
        InternalEventV2 {
            v: ENVELOPE_VERSION.to_owned(),
            correlation_id: stable_correlation_id(&message_id(self.message_sid)),
            trace_id: current_trace_id(),
            event_type: CHAT_MESSAGE_V1.to_owned(),
            ingress: Ingress {
                ingress_at: received_at,
                source: INGRESS_SOURCE.to_owned(),
                connector: CONNECTOR.to_owned(),
                channel: self.reply_channel.to_owned(),
            },
            identity: Identity {
                external: ExternalIdentity {
                    id: self.sender.to_owned(),
                    platform: PLATFORM.to_owned(),
                    display_name: self.display_name,
                    metadata: self.identity_metadata,
                },
                user: None,
            },
            egress: Egress {
                destination: topics::EGRESS.to_owned(),
                connector: CONNECTOR.to_owned(),
                kind: "chat".to_owned(),
                channel: Some(self.reply_channel.to_owned()),
                metadata: Map::from_iter([("twilio".to_owned(), Value::Object(self.reply_via))]),
            },
            routing: Routing::initial(),
            message: Some(Message {
                id: self.message_sid.to_owned(),
                role: "user".to_owned(),
                text: Some(self.text),
                media: self.media,
                raw_platform_payload: Some(self.raw),
            }),
            payload: None,
            external_event: None,
            annotations: None,
            candidates: None,
            qos: None,
            errors: None,
            metadata: Some(Map::from_iter([(
                "twilio".to_owned(),
                Value::Object(self.provenance),
            )])),
        }
    }
}
