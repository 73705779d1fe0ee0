//! Delivery status → status events on `internal.egress.status.v1`.
//!
//! Two sources: Programmable Messaging status callbacks (`POST /webhooks/twilio/status`, one
//! callback per status change of one message) and Conversations `onDeliveryUpdated` (one
//! delivery receipt per message and participant). Both become a [`MessageStatusEvent`]; the bus
//! `message_id` holds the message SID **and** the status, so every transition of a message is
//! published while an identical retry of the same callback is published once.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{
    context::IngressContext,
    deadline::Deadline,
    publish::{publish_once, WebhookOutcome},
    webhook::FormParams,
};
use crate::{
    bus::BusMessage,
    connectors::twilio::shared::INGRESS_SOURCE,
    egress::ledger::PartRecord,
    envelope::{stable_correlation_id, topics},
    error::ApiError,
};

/// The bus `type` (and CloudEvents type) of a status event published by ingress.
pub const STATUS_EVENT_TYPE: &str = "message.status.v1";

// `message.status.v1`; the egress engine's own outcome is an `EgressStatusEvent`
// (`egress.status.v1`) on the same topic. The schema keeps its published name.
/// One delivery status change of a message we sent.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(as = StatusEvent)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "messageSid": "SM939e5de19c1d3dadf423f1624401b2e9",
    "status": "undelivered",
    "errorCode": "30007",
    "errorMessage": "Message filtered by the carrier",
    "to": "+14155550101",
    "from": "+15005550006",
    "at": "2024-05-14T09:32:00Z",
    "correlationId": "e3a3fbce-5eb3-593e-b50c-fad166f44dee",
    "provider": "twilio",
    "source": "messaging.status_callback"
}))]
pub struct MessageStatusEvent {
    /// The Twilio message SID (`SM…`/`MM…`, or `IM…` for a Conversations message).
    pub message_sid: String,
    /// Twilio's status, lower case: queued, sending, sent, delivered, undelivered, failed,
    /// read, receiving, received, accepted, scheduled, canceled, partially_delivered.
    pub status: String,
    /// Twilio error code (e.g. 21610 opted out, 30007 filtered); absent when 0 or missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The recipient: a phone/WhatsApp address, or for Conversations the Conversation SID.
    pub to: String,
    /// The sender (our number or messaging service); for Conversations the bot identity when
    /// configured. Absent when Twilio does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// When the status was reported (Twilio's `DateUpdated` when given, else our receipt time).
    pub at: DateTime<Utc>,
    /// The correlation id egress put on the status callback URL, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Always `twilio`.
    pub provider: String,
    /// `messaging.status_callback` or `conversations.delivery_updated`.
    pub source: String,
    /// Extra provider fields: messaging service, conversation/participant SIDs, channel
    /// message SID, …
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

impl MessageStatusEvent {
    /// The bus `message_id`: the same callback always yields the same id, a different status
    /// of the same message a different one.
    pub fn dedupe_id(&self) -> String {
        match self.metadata.get("participantSid").and_then(Value::as_str) {
            Some(participant) => format!(
                "twilio:status:{}:{}:{}",
                self.message_sid, participant, self.status
            ),
            None => format!("twilio:status:{}:{}", self.message_sid, self.status),
        }
    }
}

/// The fields Twilio posts to a status callback (documentation of the form).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
#[schema(example = json!({
    "MessageSid": "SM6051ad9461f9506847813143656649e7",
    "SmsSid": "SM6051ad9461f9506847813143656649e7",
    "MessageStatus": "undelivered",
    "SmsStatus": "undelivered",
    "ErrorCode": "30007",
    "To": "+14155550101",
    "From": "+15005550006",
    "MessagingServiceSid": "MG00000000000000000000000000000001",
    "AccountSid": "AC00000000000000000000000000000001",
    "ApiVersion": "2010-04-01",
    "RawDlrDoneDate": "2405140932"
}))]
pub struct StatusCallbackForm {
    pub message_sid: String,
    pub message_status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub to: String,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub account_sid: String,
    pub api_version: Option<String>,
    pub raw_dlr_done_date: Option<String>,
}

/// Error codes Twilio reports as `0` (or not at all) mean "no error".
fn error_code(params: &FormParams) -> Option<String> {
    params
        .non_empty("ErrorCode")
        .filter(|code| code.trim() != "0")
        .map(|code| code.trim().to_owned())
}

/// A short description of the Twilio error codes consumers most often act on.
pub fn describe_error(code: &str) -> Option<&'static str> {
    Some(match code {
        "21211" => "Invalid 'To' phone number",
        "21408" => "Permission to send to this region is not enabled",
        "21610" => "Recipient has opted out (replied STOP)",
        "21614" => "'To' number is not a valid mobile number",
        "30001" => "Queue overflow",
        "30002" => "Account suspended",
        "30003" => "Unreachable destination handset",
        "30004" => "Message blocked",
        "30005" => "Unknown destination handset",
        "30006" => "Landline or unreachable carrier",
        "30007" => "Message filtered by the carrier",
        "30008" => "Unknown error",
        "30009" => "Missing segment",
        "30010" => "Message price exceeds max price",
        _ => return None,
    })
}

/// The `correlationId` query parameter of the callback URL egress configured, if any.
pub fn correlation_id_from_query(query: &str) -> Option<String> {
    query_param(query, "correlationId")
}

/// A non-empty query parameter of the callback URL (egress adds `correlationId`, and `part`
/// for the parts of a split message).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(key, value)| key == name && !value.is_empty())
        .map(|(_, value)| value)
}

/// A Programmable Messaging status callback → status event.
pub fn from_status_callback(
    params: &FormParams,
    correlation_id: Option<String>,
    received_at: DateTime<Utc>,
) -> Result<MessageStatusEvent, ApiError> {
    let message_sid = params
        .non_empty("MessageSid")
        .or_else(|| params.non_empty("SmsSid"))
        .ok_or_else(|| ApiError::BadRequest("missing form parameter MessageSid".to_owned()))?;
    let status = params
        .non_empty("MessageStatus")
        .or_else(|| params.non_empty("SmsStatus"))
        .ok_or_else(|| ApiError::BadRequest("missing form parameter MessageStatus".to_owned()))?
        .to_ascii_lowercase();
    let to = params.require("To")?;
    let error_code = error_code(params);
    let error_message = params
        .non_empty("ErrorMessage")
        .map(str::to_owned)
        .or_else(|| {
            error_code
                .as_deref()
                .and_then(describe_error)
                .map(str::to_owned)
        });
    let mut metadata = Map::new();
    params.copy_into(
        &mut metadata,
        &[
            ("MessagingServiceSid", "messagingServiceSid"),
            ("AccountSid", "accountSid"),
            ("RawDlrDoneDate", "rawDlrDoneDate"),
            ("ChannelStatusMessage", "channelStatusMessage"),
        ],
    );
    Ok(MessageStatusEvent {
        message_sid: message_sid.to_owned(),
        status,
        error_code,
        error_message,
        to: to.to_owned(),
        from: params.non_empty("From").map(str::to_owned),
        at: received_at,
        correlation_id,
        provider: "twilio".to_owned(),
        source: "messaging.status_callback".to_owned(),
        metadata,
    })
}

/// A Conversations `onDeliveryUpdated` webhook → status event for the bot's message.
pub fn from_conversation_delivery(
    params: &FormParams,
    bot_identity: Option<&str>,
    received_at: DateTime<Utc>,
) -> Result<MessageStatusEvent, ApiError> {
    let message_sid = params.require("MessageSid")?;
    let conversation_sid = params.require("ConversationSid")?;
    let status = params.require("Status")?.to_ascii_lowercase();
    let error_code = error_code(params);
    let at = params
        .non_empty("DateUpdated")
        .or_else(|| params.non_empty("DateCreated"))
        .and_then(|date| DateTime::parse_from_rfc3339(date).ok())
        .map_or(received_at, |date| date.to_utc());
    let mut metadata = Map::new();
    params.copy_into(
        &mut metadata,
        &[
            ("ConversationSid", "conversationSid"),
            ("ParticipantSid", "participantSid"),
            ("DeliveryReceiptSid", "deliveryReceiptSid"),
            ("ChannelMessageSid", "channelMessageSid"),
            ("ChatServiceSid", "chatServiceSid"),
            ("MessagingServiceSid", "messagingServiceSid"),
            ("AccountSid", "accountSid"),
            ("Source", "source"),
        ],
    );
    Ok(MessageStatusEvent {
        message_sid: message_sid.to_owned(),
        status,
        error_message: error_code
            .as_deref()
            .and_then(describe_error)
            .map(str::to_owned),
        error_code,
        to: conversation_sid.to_owned(),
        from: bot_identity.map(str::to_owned),
        at,
        correlation_id: None,
        provider: "twilio".to_owned(),
        source: "conversations.delivery_updated".to_owned(),
        metadata,
    })
}

/// Publishes a status event on `internal.egress.status.v1`, once per message and status.
pub(crate) async fn publish_status(
    twilio: &IngressContext,
    event: &MessageStatusEvent,
    deadline: Deadline,
) -> Result<WebhookOutcome, ApiError> {
    let message_id = event.dedupe_id();
    let correlation_id = event.correlation_id.clone().unwrap_or_else(|| {
        stable_correlation_id(&format!("twilio:{}", event.message_sid)).to_string()
    });
    let message = BusMessage::json(
        topics::EGRESS_STATUS,
        message_id,
        correlation_id,
        STATUS_EVENT_TYPE,
        INGRESS_SOURCE,
        event,
    )
    .map_err(|e| ApiError::BadRequest(format!("cannot encode event: {e}")))?;
    let delivery = publish_once(twilio, message, deadline).await?;
    tracing::info!(
        message_sid = %event.message_sid,
        status = %event.status,
        error_code = event.error_code.as_deref().unwrap_or(""),
        delivery = delivery.as_str(),
        "status event accepted"
    );
    Ok(WebhookOutcome::Delivered(delivery))
}

/// A status callback of a part egress sent (its URL carries the part's ledger key) tells
/// what the send created, even when the create's own answer was lost: record it, so a retry
/// does not send the part again. Whatever the ledger already knows stays.
pub(crate) async fn complete_ledger(twilio: &IngressContext, part_key: &str, message_sid: &str) {
    let ledger = twilio.ledger();
    match ledger.get(part_key).await {
        Ok(Some(PartRecord::Sent { .. })) => {}
        Ok(_) => {
            if let Err(error) = ledger
                .sent(part_key, message_sid, Some("status_callback"))
                .await
            {
                tracing::warn!(%error, "status callback not recorded in the send ledger");
            }
        }
        Err(error) => tracing::warn!(%error, "send ledger unavailable for a status callback"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> FormParams {
        FormParams::from_pairs(pairs)
    }

    #[test]
    fn a_status_callback_becomes_a_status_event() {
        let at = Utc::now();
        let params = form(&[
            ("ErrorCode", "30007"),
            ("SmsSid", "SM1"),
            ("SmsStatus", "undelivered"),
            ("MessageStatus", "undelivered"),
            ("To", "+14155550101"),
            ("From", "+15005550006"),
            ("MessageSid", "SM1"),
            ("MessagingServiceSid", "MG1"),
        ]);
        let event = from_status_callback(&params, Some("c-1".into()), at).unwrap();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["messageSid"], "SM1");
        assert_eq!(json["status"], "undelivered");
        assert_eq!(json["errorCode"], "30007");
        assert_eq!(json["errorMessage"], "Message filtered by the carrier");
        assert_eq!(json["to"], "+14155550101");
        assert_eq!(json["from"], "+15005550006");
        assert_eq!(json["correlationId"], "c-1");
        assert_eq!(json["metadata"]["messagingServiceSid"], "MG1");
        assert_eq!(event.dedupe_id(), "twilio:status:SM1:undelivered");
    }

    #[test]
    fn error_code_zero_and_missing_correlation_are_left_out() {
        let params = form(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "Delivered"),
            ("ErrorCode", "0"),
            ("To", "+1"),
        ]);
        let event = from_status_callback(&params, None, Utc::now()).unwrap();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["status"], "delivered");
        assert!(json.get("errorCode").is_none());
        assert!(json.get("correlationId").is_none());
        assert!(json.get("from").is_none());
    }

    #[test]
    fn callbacks_missing_required_fields_are_rejected() {
        for pairs in [
            vec![("MessageStatus", "sent"), ("To", "+1")],
            vec![("MessageSid", "SM1"), ("To", "+1")],
            vec![("MessageSid", "SM1"), ("MessageStatus", "sent")],
        ] {
            assert!(from_status_callback(&form(&pairs), None, Utc::now()).is_err());
        }
    }

    #[test]
    fn the_correlation_id_comes_from_the_query() {
        assert_eq!(
            correlation_id_from_query("a=1&correlationId=abc-def").as_deref(),
            Some("abc-def")
        );
        assert_eq!(correlation_id_from_query("correlationId="), None);
        assert_eq!(
            query_param("correlationId=x&part=2", "part").as_deref(),
            Some("2")
        );
        assert_eq!(correlation_id_from_query(""), None);
    }

    #[test]
    fn a_conversation_delivery_receipt_becomes_a_status_event() {
        let params = form(&[
            ("EventType", "onDeliveryUpdated"),
            ("DeliveryReceiptSid", "DY1"),
            ("ChannelMessageSid", "SM9"),
            ("DateUpdated", "2024-05-14T09:31:17.512Z"),
            ("Status", "failed"),
            ("ErrorCode", "30008"),
            ("MessageSid", "IM1"),
            ("ParticipantSid", "MB1"),
            ("ConversationSid", "CH1"),
        ]);
        let event = from_conversation_delivery(&params, Some("ingress-bot"), Utc::now()).unwrap();
        assert_eq!(event.message_sid, "IM1");
        assert_eq!(event.status, "failed");
        assert_eq!(event.error_code.as_deref(), Some("30008"));
        assert_eq!(event.to, "CH1");
        assert_eq!(event.from.as_deref(), Some("ingress-bot"));
        assert_eq!(event.at.to_rfc3339(), "2024-05-14T09:31:17.512+00:00");
        assert_eq!(event.metadata["channelMessageSid"], "SM9");
        assert_eq!(event.dedupe_id(), "twilio:status:IM1:MB1:failed");
    }
}
