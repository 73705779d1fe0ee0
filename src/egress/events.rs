//! The events egress publishes about its work: an [`EgressStatusEvent`] on
//! `internal.egress.status.v1` for every outcome, and a [`DeadLetter`] on
//! `internal.deadletter.v1` for every event it gives up on. Both are plain JSON (camelCase)
//! published through [`crate::publisher::EventPublisher`] with a stable `message_id`, so a
//! redelivered event yields the same ids again. (Connectors publish their own delivery receipts
//! on the same topic under another `type`.)

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::sink::TextInfo;
use crate::{bus::BusMessage, envelope::topics};

/// `type` (and CloudEvents type) of status events.
pub const STATUS_EVENT_TYPE: &str = "egress.status.v1";
/// `type` (and CloudEvents type) of dead letters.
pub const DEAD_LETTER_TYPE: &str = "deadletter.v1";

/// What happened to a send attempt (`Retried`) or to a whole egress event (the others): the
/// `status` of an [`EgressStatusEvent`] and the `outcome` label of `egress_sends_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every part was accepted by the platform.
    Sent,
    /// One attempt failed and will be tried again (never the outcome of a whole event).
    Retried,
    /// The platform refused it permanently (e.g. invalid number); also dead-lettered.
    Failed,
    /// Not sent: malformed event or retries exhausted; dead-lettered.
    DeadLettered,
    /// The recipient opted out (e.g. replied STOP to an SMS); also dead-lettered.
    OptedOut,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Retried => "retried",
            Outcome::Failed => "failed",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::OptedOut => "opted_out",
        }
    }
}

/// One part of a sent (or attempted) event.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartReport {
    pub index: usize,
    #[serde(flatten)]
    pub text: TextInfo,
    pub media: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_sid: Option<String>,
    pub attempts: u32,
    /// How an earlier attempt's outcome was learnt instead of sending again: `ledger` (recorded
    /// before), or the sink's way of looking (`attributes`, `status_callback`, `listing`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
}

/// Body of an `egress.status.v1` event on `internal.egress.status.v1`: the outcome of one
/// egress event.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressStatusEvent {
    /// The envelope's correlation id (absent only when the event was unreadable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub connector: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub status: Outcome,
    /// Provider id of the first part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_sid: Option<String>,
    /// Provider ids of every accepted part, in order.
    pub provider_sids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Dead-letter reason when not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Send attempts over all parts.
    pub attempts: u32,
    /// Number of parts the text was split into.
    pub parts: usize,
    pub parts_sent: usize,
    /// SMS segments over all parts.
    pub segments: u32,
    pub part_details: Vec<PartReport>,
    /// `message_id` of the egress event we consumed, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_message_id: Option<String>,
    pub at: DateTime<Utc>,
}

/// Body of `internal.deadletter.v1`.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub connector: String,
    pub reason: String,
    pub detail: String,
    pub error_code: Option<u32>,
    pub http_status: Option<u16>,
    pub attempts: u32,
    pub correlation_id: Option<String>,
    pub target: Option<String>,
    pub event_message_id: Option<String>,
    /// The event as consumed: its JSON, or the raw text when it was not JSON.
    pub original_event: Value,
}

impl DeadLetter {
    /// `{reason, <connector>ErrorCode?, httpStatus?, attempts, originalEvent, …}`.
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("reason".into(), self.reason.clone().into());
        body.insert("detail".into(), self.detail.clone().into());
        body.insert("connector".into(), self.connector.clone().into());
        if let Some(code) = self.error_code {
            body.insert(format!("{}ErrorCode", self.connector), code.into());
            body.insert("errorCode".into(), code.into());
        }
        if let Some(status) = self.http_status {
            body.insert("httpStatus".into(), status.into());
        }
        body.insert("attempts".into(), self.attempts.into());
        if let Some(id) = &self.correlation_id {
            body.insert("correlationId".into(), id.clone().into());
        }
        if let Some(target) = &self.target {
            body.insert("target".into(), target.clone().into());
        }
        if let Some(id) = &self.event_message_id {
            body.insert("eventMessageId".into(), id.clone().into());
        }
        body.insert("source".into(), "internal.egress.v1".into());
        body.insert("deadLetteredAt".into(), Utc::now().to_rfc3339().into());
        body.insert("originalEvent".into(), self.original_event.clone());
        Value::Object(body)
    }
}

/// The status event as a bus message; `event_key` identifies the consumed event.
pub fn status_message(event_key: &str, status: &EgressStatusEvent) -> BusMessage {
    BusMessage::json(
        topics::EGRESS_STATUS,
        format!("egress-status:{event_key}:{}", status.status.as_str()),
        status
            .correlation_id
            .clone()
            .unwrap_or_else(|| event_key.to_owned()),
        STATUS_EVENT_TYPE,
        &format!("egress.{}", status.connector),
        status,
    )
    .expect("status events serialise")
}

/// The dead letter as a bus message.
pub fn dead_letter_message(event_key: &str, dead_letter: &DeadLetter) -> BusMessage {
    BusMessage::json(
        topics::DEADLETTER,
        format!("deadletter:{event_key}"),
        dead_letter
            .correlation_id
            .clone()
            .unwrap_or_else(|| event_key.to_owned()),
        DEAD_LETTER_TYPE,
        &format!("egress.{}", dead_letter.connector),
        &dead_letter.to_json(),
    )
    .expect("dead letters serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_name_the_provider_code() {
        let dl = DeadLetter {
            connector: "sms".into(),
            reason: "provider_rejected".into(),
            detail: "invalid To".into(),
            error_code: Some(21211),
            http_status: Some(400),
            attempts: 1,
            correlation_id: Some("c".into()),
            target: Some("+1".into()),
            event_message_id: None,
            original_event: serde_json::json!({"v": "2"}),
        };
        let json = dl.to_json();
        assert_eq!(json["smsErrorCode"], 21211);
        assert_eq!(json["httpStatus"], 400);
        assert_eq!(json["attempts"], 1);
        assert_eq!(json["originalEvent"]["v"], "2");
        let message = dead_letter_message("k", &dl);
        assert_eq!(message.topic, "internal.deadletter.v1");
        assert_eq!(message.message_id, "deadletter:k");
    }
}
