//! The bus-neutral message types: what is published ([`BusMessage`]), how a publish can fail
//! ([`PublishError`]) and how the connection is doing ([`BusState`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `app_id` stamped on everything we publish.
pub const APP_ID: &str = "ingress-egress";

/// AMQP header set to `true` on messages published without the shared dedupe window.
pub const POSSIBLE_DUPLICATE_HEADER: &str = "x-possible-duplicate";

/// One message to publish: the body plus the properties §3.3 of the design asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BusMessage {
    /// Topic name without `BUS_PREFIX`, e.g. `internal.ingress.v1`.
    pub topic: String,
    /// Stable id: the same provider event always yields the same one.
    pub message_id: String,
    pub correlation_id: String,
    /// The envelope `type`, also the CloudEvents type.
    pub kind: String,
    /// CloudEvents `source`.
    pub source: String,
    pub timestamp: DateTime<Utc>,
    /// W3C `traceparent` of the span that published it (the `traceparent` AMQP header); the
    /// publisher fills it in. Outbox entries written before it existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// JSON body.
    pub body: String,
    /// Published although the shared dedupe window could not be consulted: consumers should
    /// dedupe it on `message_id` (the AMQP header `x-possible-duplicate`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub possible_duplicate: bool,
}

impl BusMessage {
    /// Serialises `body` as JSON into a message for `topic`.
    pub fn json<T: Serialize>(
        topic: &str,
        message_id: String,
        correlation_id: String,
        kind: &str,
        source: &str,
        body: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            topic: topic.to_owned(),
            message_id,
            correlation_id,
            kind: kind.to_owned(),
            source: source.to_owned(),
            timestamp: Utc::now(),
            trace_parent: None,
            body: serde_json::to_string(body)?,
            possible_duplicate: false,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker not connected")]
    NotConnected,
    #[error("broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("broker error: {0}")]
    Broker(String),
}

/// Connection state, as `/readyz` and the debug snapshot show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "state"
)]
pub enum BusState {
    Connected,
    Connecting { last_error: Option<String> },
    Embedded,
}

/// `BUS_PREFIX` + topic.
pub fn routing_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}{topic}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traceparent_survives_the_outbox_and_older_entries_still_read() {
        let mut message = BusMessage::json(
            "internal.ingress.v1",
            "twilio:SM1".into(),
            "c".into(),
            "chat.message.v1",
            "test",
            &serde_json::json!({}),
        )
        .unwrap();
        message.trace_parent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let stored = serde_json::to_value(&message).unwrap();
        assert_eq!(stored["traceParent"], message.trace_parent.clone().unwrap());
        assert_eq!(
            serde_json::from_value::<BusMessage>(stored.clone()).unwrap(),
            message
        );

        let mut older = stored;
        older.as_object_mut().unwrap().remove("traceParent");
        let read: BusMessage = serde_json::from_value(older).unwrap();
        assert_eq!(read.trace_parent, None);
    }
}
