//! `InternalEventV2`: the versioned event envelope every connector of the platform speaks.
//!
//! The JSON shape (camelCase) is a contract with existing consumers; its schema is published in
//! `openapi/internal-event-v2.schema.json`. Parts the platform treats as open-ended (`payload`,
//! `qos`, `annotations`, …) stay `serde_json::Value` so we round-trip what others put there.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The envelope version this service writes.
pub const ENVELOPE_VERSION: &str = "2";
/// `type` of a user or bot chat message.
pub const CHAT_MESSAGE_V1: &str = "chat.message.v1";

/// Well-known topic names; the routing key is `BUS_PREFIX` + topic.
pub mod topics {
    pub const INGRESS: &str = "internal.ingress.v1";
    pub const EGRESS: &str = "internal.egress.v1";
    pub const EGRESS_STATUS: &str = "internal.egress.status.v1";
    pub const DEADLETTER: &str = "internal.deadletter.v1";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InternalEventV2 {
    pub v: String,
    pub correlation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub ingress: Ingress,
    pub identity: Identity,
    pub egress: Egress,
    pub routing: Routing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_event: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<Candidate>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    pub ingress_at: DateTime<Utc>,
    pub source: String,
    pub connector: String,
    /// The reply address: a Conversation SID or the sender's address.
    pub channel: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub external: ExternalIdentity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalIdentity {
    pub id: String,
    pub platform: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Egress {
    pub destination: String,
    pub connector: String,
    /// `chat` (reply where the message came from) or `dm` (reply to the person).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<Media>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_platform_payload: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Media {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    pub stage: String,
    #[serde(default)]
    pub slip: Vec<Value>,
    #[serde(default)]
    pub history: Vec<Value>,
}

impl Routing {
    pub fn initial() -> Self {
        Self {
            stage: "initial".to_owned(),
            slip: Vec::new(),
            history: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidateStatus {
    Proposed,
    Selected,
    Superseded,
    Rejected,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub id: String,
    pub kind: String,
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub status: CandidateStatus,
    /// Lower wins.
    pub priority: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// A correlation id derived from a stable provider id, so a retried webhook yields the same one.
pub fn stable_correlation_id(stable_id: &str) -> Uuid {
    Uuid::new_v5(&CORRELATION_NAMESPACE, stable_id.as_bytes())
}

/// Namespace for [`stable_correlation_id`] (a fixed random UUID; changing it changes every id).
const CORRELATION_NAMESPACE: Uuid = Uuid::from_u128(0x5b1e_9a0c_7d4f_4e3a_9c61_2f0d_8e7b_a431);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_are_stable_per_provider_id() {
        assert_eq!(
            stable_correlation_id("twilio:SM1"),
            stable_correlation_id("twilio:SM1")
        );
        assert_ne!(
            stable_correlation_id("twilio:SM1"),
            stable_correlation_id("twilio:SM2")
        );
    }

    #[test]
    fn envelopes_from_other_services_round_trip() {
        let json = serde_json::json!({
            "v": "2",
            "correlationId": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            "type": "chat.message.v1",
            "ingress": {"ingressAt": "2026-01-01T00:00:00Z", "source": "llm-bot", "connector": "twilio", "channel": "+15005550006"},
            "identity": {"external": {"id": "+15005550006", "platform": "twilio"}},
            "egress": {"destination": "internal.egress.v1", "connector": "twilio", "type": "chat"},
            "routing": {"stage": "responded", "slip": [], "history": [{"stage": "initial"}]},
            "candidates": [{"id": "c1", "kind": "text", "source": "llm", "createdAt": "2026-01-01T00:00:01Z",
                            "status": "selected", "priority": 1, "confidence": 0.9, "text": "hello"}],
            "qos": {"priority": "high"},
            "annotations": [{"kind": "x"}]
        });
        let event: InternalEventV2 = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            event.candidates.as_ref().unwrap()[0].status,
            CandidateStatus::Selected
        );
        let back = serde_json::to_value(&event).unwrap();
        assert_eq!(back["qos"], json["qos"]);
        assert_eq!(back["routing"], json["routing"]);
        assert_eq!(back["candidates"][0]["text"], "hello");
    }
}
