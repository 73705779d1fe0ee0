//! Twilio Event Streams webhook sink: a JSON array of CloudEvents, signed through the URL's
//! `bodySHA256` parameter.
//!
//! - `com.twilio.messaging.inbound-message.received` → the same envelope as the SMS webhook
//!   (built by [`super::sms::inbound_message_envelope`]). The event carries `numMedia` but no
//!   media URLs, so an MMS's media are listed through the REST API first ([`with_listed_media`]).
//! - `com.twilio.conversations.message.added` → the same envelope as `onMessageAdded` (built
//!   by [`super::conversation_message::message_added_envelope`]); the bot's own messages are skipped.
//! - any other type: acknowledged, counted in `ignored_events_total`, not published.
//!
//! Each event's `data` is turned into the form parameters Twilio's webhooks carry, so both
//! paths share one envelope builder, and the same message arriving through the webhook and
//! through Event Streams has the same bus `message_id` (published once).
//!
//! A batch must be answered within Twilio's 5 s, so its events are published concurrently
//! (at most [`MAX_CONCURRENT_EVENTS`] at once), except that events with the same reply channel
//! (sender or conversation) keep their batch order. Event Streams retries a batch answered
//! with a 5xx or not answered in time (for up to four hours) and discards one answered with
//! any other 4xx than 429, which decides what a failure answers: a malformed event is skipped
//! (never a 400 for the batch), and an MMS whose media cannot be listed now (REST 429, 5xx,
//! timeout) fails the batch with 503, so Twilio redelivers it; the events already published
//! are then deduplicated by `message_id`.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures_util::{stream, StreamExt};
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::{
    context::IngressContext,
    conversations,
    deadline::Deadline,
    publish::{publish_envelope, WebhookOutcome},
    sms,
    webhook::FormParams,
};
use crate::{error::ApiError, publisher::Delivery};

pub const INBOUND_MESSAGE_RECEIVED: &str = "com.twilio.messaging.inbound-message.received";
pub const CONVERSATION_MESSAGE_ADDED: &str = "com.twilio.conversations.message.added";

/// The most events one request may carry (Twilio batches far fewer).
const MAX_EVENTS: usize = 1000;

/// The most events of one batch in progress at once: enough to overlap the broker's confirms,
/// few enough that one large batch does not flood the broker or Twilio's REST API.
pub const MAX_CONCURRENT_EVENTS: usize = 32;

/// Time kept after listing an MMS's media for publishing it.
const PUBLISH_RESERVE: Duration = Duration::from_secs(1);

/// One CloudEvent as Twilio Event Streams delivers it (documentation of the body, which is a
/// JSON array of these).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "specversion": "1.0",
    "type": "com.twilio.messaging.inbound-message.received",
    "source": "/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages/SM0beb93633d34954fb43920c1e22b83fc.json",
    "id": "EZ0beb93633d34954fb43920c1e22b83fc",
    "dataschema": "https://events-schemas.twilio.com/Messaging.InboundMessageV1/6",
    "datacontenttype": "application/json",
    "time": "2024-05-14T09:40:00.000Z",
    "data": {
        "messageSid": "SM0beb93633d34954fb43920c1e22b83fc",
        "accountSid": "AC00000000000000000000000000000001",
        "from": "+14155550100",
        "to": "+15005550006",
        "body": "Event Streams says hi",
        "numMedia": 0,
        "numSegments": 1,
        "messagingServiceSid": "MG00000000000000000000000000000001"
    }
}))]
pub struct TwilioCloudEvent {
    pub specversion: String,
    /// `com.twilio.messaging.inbound-message.received`, `com.twilio.conversations.message.added`
    /// (published); anything else is acknowledged and ignored.
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    pub id: String,
    pub dataschema: Option<String>,
    pub datacontenttype: Option<String>,
    pub time: Option<String>,
    #[schema(value_type = Object)]
    pub data: Value,
}

/// Handles one verified Event Streams delivery.
pub(crate) async fn handle_batch(
    twilio: &IngressContext,
    body: &[u8],
    deadline: Deadline,
) -> Result<WebhookOutcome, ApiError> {
    let events = parse_batch(body)?;
    let received_at = Utc::now();
    let in_flight = InFlight::default();
    let lanes: Vec<Result<Vec<WebhookOutcome>, ApiError>> = stream::iter(lanes(&events))
        .map(|lane| {
            let in_flight = &in_flight;
            async move {
                let mut outcomes = Vec::with_capacity(lane.len());
                for event in lane {
                    let _in_flight = in_flight.enter();
                    // A failed event ends its lane: publishing the ones after it would put
                    // them before it once Twilio redelivers the batch.
                    outcomes.push(handle_one(twilio, event, received_at, deadline).await?);
                }
                Ok(outcomes)
            }
        })
        .buffer_unordered(MAX_CONCURRENT_EVENTS)
        .collect()
        .await;
    if !events.is_empty() {
        twilio
            .event_streams_concurrency()
            .observe(in_flight.peak() as f64);
    }
    let mut outcomes = Vec::with_capacity(events.len());
    for lane in lanes {
        outcomes.extend(lane?);
    }
    Ok(summarise(&outcomes))
}

/// The batch's events split by reply channel, each lane in batch order, lanes in the order
/// their first event appears.
fn lanes(events: &[Map<String, Value>]) -> Vec<Vec<&Map<String, Value>>> {
    let mut lanes: Vec<Vec<&Map<String, Value>>> = Vec::new();
    let mut by_channel: HashMap<&str, usize> = HashMap::new();
    for event in events {
        let lane = match reply_channel(event) {
            Some(channel) => *by_channel.entry(channel).or_insert_with(|| {
                lanes.push(Vec::new());
                lanes.len() - 1
            }),
            None => {
                lanes.push(Vec::new());
                lanes.len() - 1
            }
        };
        lanes[lane].push(event);
    }
    lanes
}

/// Where a reply to the event's message would go: the sender of an inbound message, the
/// conversation of a conversation message; `None` for anything else.
fn reply_channel(event: &Map<String, Value>) -> Option<&str> {
    let data = event.get("data").and_then(Value::as_object)?;
    let field = match event.get("type").and_then(Value::as_str)? {
        INBOUND_MESSAGE_RECEIVED => "from",
        CONVERSATION_MESSAGE_ADDED => "ConversationSid",
        _ => return None,
    };
    data.get(field).and_then(Value::as_str)
}

/// Counts the events in progress and remembers the most at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl InFlight {
    fn enter(&self) -> InFlightGuard<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        InFlightGuard(self)
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The body as a list of CloudEvent objects (a single object is taken as a batch of one).
pub fn parse_batch(body: &[u8]) -> Result<Vec<Map<String, Value>>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => {
            return Err(ApiError::BadRequest(
                "expected a JSON array of CloudEvents".to_owned(),
            ))
        }
    };
    if items.len() > MAX_EVENTS {
        return Err(ApiError::BadRequest(format!(
            "{} events exceed the maximum of {MAX_EVENTS} per request",
            items.len()
        )));
    }
    items
        .into_iter()
        .map(|item| match item {
            Value::Object(event) => Ok(event),
            _ => Err(ApiError::BadRequest(
                "every CloudEvent must be a JSON object".to_owned(),
            )),
        })
        .collect()
}

async fn handle_one(
    twilio: &IngressContext,
    event: &Map<String, Value>,
    received_at: DateTime<Utc>,
    deadline: Deadline,
) -> Result<WebhookOutcome, ApiError> {
    let event_type = event.get("type").and_then(Value::as_str).unwrap_or("");
    let data = event.get("data").and_then(Value::as_object);
    let result = match (event_type, data) {
        (INBOUND_MESSAGE_RECEIVED, Some(data)) => {
            inbound_message(twilio, event, data, received_at, deadline).await
        }
        (CONVERSATION_MESSAGE_ADDED, Some(data)) => {
            let params = conversation_message_params(data);
            conversations::on_message_added(
                twilio,
                &params,
                received_at,
                Some(via(event)),
                deadline,
            )
            .await
        }
        (INBOUND_MESSAGE_RECEIVED | CONVERSATION_MESSAGE_ADDED, None) => Err(ApiError::BadRequest(
            "CloudEvent without a data object".to_owned(),
        )),
        (other, _) => {
            conversations::count_ignored(twilio, if other.is_empty() { "(none)" } else { other });
            tracing::debug!(event_type = other, "event streams event ignored");
            return Ok(WebhookOutcome::Ignored);
        }
    };
    match result {
        // One malformed event must not make Twilio discard the whole batch: log and count it,
        // and go on with the rest.
        Err(ApiError::BadRequest(reason)) => {
            let event_id = event.get("id").and_then(Value::as_str).unwrap_or("");
            tracing::warn!(
                event_type,
                event_id,
                %reason,
                "malformed event streams event skipped"
            );
            conversations::count_ignored(twilio, &format!("{event_type}.malformed"));
            Ok(WebhookOutcome::Ignored)
        }
        other => other,
    }
}

/// `Messaging.InboundMessageV1` → the SMS webhook's envelope, media listed through REST.
async fn inbound_message(
    twilio: &IngressContext,
    event: &Map<String, Value>,
    data: &Map<String, Value>,
    received_at: DateTime<Utc>,
    deadline: Deadline,
) -> Result<WebhookOutcome, ApiError> {
    let (params, media_error) =
        with_listed_media(twilio, inbound_message_params(data), deadline).await?;
    let mut envelope = sms::inbound_message_envelope(&params, received_at)?;
    mark_via(&mut envelope.metadata, event);
    envelope.errors = media_error.map(|error| vec![error]);
    publish_envelope(twilio, &envelope, deadline).await
}

/// The parameters with `MediaUrlN` / `MediaContentTypeN` added from the REST media list when
/// the event counts media it does not carry (and `NumMedia` set to the number listed), plus an
/// `errors` entry for the envelope when some or all media cannot be had.
///
/// A list that cannot be fetched now (429, 5xx, no answer before the deadline) is
/// [`ApiError::Unavailable`]: Event Streams redelivers the batch. A refusal that a retry would
/// not change (404, 401, no account configured) publishes the message without the missing
/// media and says so in `errors`, rather than have Twilio retry for hours and drop it.
async fn with_listed_media(
    twilio: &IngressContext,
    mut params: FormParams,
    deadline: Deadline,
) -> Result<(FormParams, Option<Value>), ApiError> {
    let expected = params
        .non_empty("NumMedia")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    if expected == 0 || params.non_empty("MediaUrl0").is_some() {
        return Ok((params, None));
    }
    let message_sid = params.require("MessageSid")?.to_owned();
    let lookups = twilio.media_lookups();
    let listed = tokio::time::timeout_at(
        deadline.earlier_by(PUBLISH_RESERVE).instant(),
        twilio.rest().list_message_media(&message_sid),
    )
    .await;
    let (media, error) = match listed {
        Ok(Ok(media)) => (media, None),
        Ok(Err(error)) if !error.is_retryable() => {
            lookups.with_label_values(&["unavailable"]).inc();
            tracing::warn!(%message_sid, error = %error.summary(), "media of an MMS cannot be listed; published without them");
            (Vec::new(), Some(error.summary()))
        }
        failed => {
            lookups.with_label_values(&["retry"]).inc();
            let reason = match failed {
                Ok(Err(error)) => error.summary(),
                _ => "no answer before the webhook's deadline".to_owned(),
            };
            tracing::warn!(%message_sid, %reason, "media of an MMS not listed; the batch is answered 503 for Twilio to redeliver");
            twilio.record_error(format!("media list of {message_sid}: {reason}"));
            return Err(ApiError::Unavailable(
                "the media of an MMS could not be listed yet; redeliver the batch".to_owned(),
            ));
        }
    };
    let media: Vec<_> = media.into_iter().take(sms::MAX_MEDIA).collect();
    if error.is_none() {
        lookups.with_label_values(&["listed"]).inc();
    }
    params.0.retain(|(name, _)| name != "NumMedia");
    params
        .0
        .push(("NumMedia".to_owned(), media.len().to_string()));
    for (i, item) in media.iter().enumerate() {
        params.0.push((format!("MediaUrl{i}"), item.url.clone()));
        if let Some(content_type) = &item.content_type {
            params
                .0
                .push((format!("MediaContentType{i}"), content_type.clone()));
        }
    }
    let error = match error {
        Some(reason) => Some(reason),
        None if media.len() < expected => {
            Some(format!("Twilio listed {} of {expected} media", media.len()))
        }
        None => None,
    };
    Ok((
        params,
        error.map(|reason| {
            json!({
                "code": "media_unavailable",
                "message": reason,
                "numMedia": expected,
                "listed": media.len(),
            })
        }),
    ))
}

/// `metadata.twilio` additions naming the CloudEvent an envelope came from.
fn via(event: &Map<String, Value>) -> Map<String, Value> {
    let mut extra = Map::new();
    extra.insert("via".into(), "event_streams".into());
    for (field, key) in [("id", "cloudEventId"), ("type", "cloudEventType")] {
        if let Some(value) = event.get(field).and_then(Value::as_str) {
            extra.insert(key.into(), value.into());
        }
    }
    extra
}

fn mark_via(metadata: &mut Option<Map<String, Value>>, event: &Map<String, Value>) {
    if let Some(Value::Object(twilio)) = metadata.as_mut().and_then(|m| m.get_mut("twilio")) {
        twilio.extend(via(event));
    }
}

/// One webhook-style parameter from a JSON value (`None` for null).
fn param_value(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(_) | Value::Object(_) => Some(value.to_string()),
    }
}

/// `messageSid` → `MessageSid`: the Messaging webhook's parameter names.
fn pascal_case(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `Messaging.InboundMessageV1` data → the parameters of the inbound SMS webhook.
pub fn inbound_message_params(data: &Map<String, Value>) -> FormParams {
    let mut params = Vec::with_capacity(data.len());
    for (key, value) in data {
        match (key.as_str(), value) {
            // Media lists, should Twilio send them as arrays: MediaUrl0…, MediaContentType0…
            ("mediaUrls" | "mediaContentTypes", Value::Array(items)) => {
                let prefix = if key == "mediaUrls" {
                    "MediaUrl"
                } else {
                    "MediaContentType"
                };
                for (i, item) in items.iter().enumerate() {
                    if let Some(text) = param_value(item) {
                        params.push((format!("{prefix}{i}"), text));
                    }
                }
            }
            _ => {
                if let Some(text) = param_value(value) {
                    params.push((pascal_case(key), text));
                }
            }
        }
    }
    FormParams(params)
}

/// `Conversations.MessageAdded` data → the parameters of the `onMessageAdded` webhook.
pub fn conversation_message_params(data: &Map<String, Value>) -> FormParams {
    let mut params = vec![("EventType".to_owned(), "onMessageAdded".to_owned())];
    let has_body = data.contains_key("Body") || data.contains_key("body");
    for (key, value) in data {
        let name = match key.as_str() {
            "MessageBody" | "messageBody" if !has_body => "Body".to_owned(),
            _ => pascal_case(key),
        };
        if let Some(text) = param_value(value) {
            params.push((name, text));
        }
    }
    FormParams(params)
}

/// One outcome for the whole batch, for the response metrics.
fn summarise(outcomes: &[WebhookOutcome]) -> WebhookOutcome {
    let has = |wanted: Delivery| {
        outcomes
            .iter()
            .any(|o| matches!(o, WebhookOutcome::Delivered(d) if *d == wanted))
    };
    for delivery in [Delivery::Published, Delivery::Outboxed, Delivery::Duplicate] {
        if has(delivery) {
            return WebhookOutcome::Delivered(delivery);
        }
    }
    WebhookOutcome::Ignored
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inbound_message_data_becomes_the_sms_webhook_envelope() {
        let data = json!({
            "messageSid": "SM1", "accountSid": "AC1", "from": "+14155550100",
            "to": "+15005550006", "numMedia": 0, "body": "hi 👋", "fromCountry": "US",
            "messagingServiceSid": "MG1", "numSegments": 1, "nothing": null
        });
        let params = inbound_message_params(data.as_object().unwrap());
        assert_eq!(params.get("MessageSid"), Some("SM1"));
        assert_eq!(params.get("NumMedia"), Some("0"));
        assert_eq!(params.get("Nothing"), None);
        let via_es = sms::inbound_message_envelope(&params, Utc::now()).unwrap();
        let form = FormParams(vec![
            ("MessageSid".into(), "SM1".into()),
            ("AccountSid".into(), "AC1".into()),
            ("From".into(), "+14155550100".into()),
            ("To".into(), "+15005550006".into()),
            ("NumMedia".into(), "0".into()),
            ("Body".into(), "hi 👋".into()),
            ("FromCountry".into(), "US".into()),
            ("MessagingServiceSid".into(), "MG1".into()),
            ("NumSegments".into(), "1".into()),
        ]);
        let via_form = sms::inbound_message_envelope(&form, via_es.ingress.ingress_at).unwrap();
        assert_eq!(via_es.correlation_id, via_form.correlation_id);
        assert_eq!(via_es.identity, via_form.identity);
        assert_eq!(via_es.egress, via_form.egress);
        assert_eq!(via_es.ingress, via_form.ingress);
        assert_eq!(
            via_es.message.as_ref().unwrap().text,
            via_form.message.as_ref().unwrap().text
        );
    }

    #[test]
    fn media_arrays_become_numbered_parameters() {
        let data = json!({"mediaUrls": ["https://x/ME1"], "mediaContentTypes": ["image/png"]});
        let params = inbound_message_params(data.as_object().unwrap());
        assert_eq!(params.get("MediaUrl0"), Some("https://x/ME1"));
        assert_eq!(params.get("MediaContentType0"), Some("image/png"));
    }

    #[test]
    fn conversation_message_data_becomes_on_message_added() {
        let data = json!({
            "AccountSid": "AC1", "Author": "+14155550100", "ParticipantSid": "MB1",
            "ConversationSid": "CH1", "MessageSid": "IM1", "Index": 7,
            "MessageBody": "refund?", "Attributes": {"a": 1},
            "Media": [{"MediaSid": "ME1", "Filename": "a.png", "ContentType": "image/png", "Size": 3}]
        });
        let params = conversation_message_params(data.as_object().unwrap());
        assert_eq!(params.get("Body"), Some("refund?"));
        assert_eq!(params.get("Index"), Some("7"));
        assert_eq!(params.get("Attributes"), Some(r#"{"a":1}"#));
        let envelope =
            crate::connectors::twilio::ingress::conversation_message::message_added_envelope(
                &params,
                Utc::now(),
            )
            .unwrap();
        let json = serde_json::to_value(&envelope).unwrap();
        assert_eq!(json["ingress"]["channel"], "CH1");
        assert_eq!(json["message"]["text"], "refund?");
        assert_eq!(json["message"]["media"][0]["sid"], "ME1");
        assert_eq!(json["metadata"]["twilio"]["index"], 7);
        assert_eq!(json["metadata"]["twilio"]["attributes"]["a"], 1);
        assert_eq!(
            json["identity"]["external"]["metadata"]["channelType"],
            "mms"
        );
    }

    #[test]
    fn lanes_keep_one_channels_events_in_order_and_split_the_rest() {
        let event = |kind: &str, data: Value| {
            json!({"type": kind, "data": data})
                .as_object()
                .unwrap()
                .clone()
        };
        let batch = vec![
            event(
                INBOUND_MESSAGE_RECEIVED,
                json!({"from": "+1", "body": "a1"}),
            ),
            event(
                CONVERSATION_MESSAGE_ADDED,
                json!({"ConversationSid": "CH1", "Index": 1}),
            ),
            event(
                INBOUND_MESSAGE_RECEIVED,
                json!({"from": "+2", "body": "b1"}),
            ),
            event("com.twilio.other", json!({"from": "+1"})),
            event(
                INBOUND_MESSAGE_RECEIVED,
                json!({"from": "+1", "body": "a2"}),
            ),
            event(
                CONVERSATION_MESSAGE_ADDED,
                json!({"ConversationSid": "CH1", "Index": 2}),
            ),
            event(INBOUND_MESSAGE_RECEIVED, json!({"body": "no sender"})),
        ];
        let lanes = lanes(&batch);
        let shape: Vec<Vec<String>> = lanes
            .iter()
            .map(|lane| lane.iter().map(|e| e["data"].to_string()).collect())
            .collect();
        assert_eq!(
            shape,
            [
                vec![batch[0]["data"].to_string(), batch[4]["data"].to_string()],
                vec![batch[1]["data"].to_string(), batch[5]["data"].to_string()],
                vec![batch[2]["data"].to_string()],
                vec![batch[3]["data"].to_string()],
                vec![batch[6]["data"].to_string()],
            ]
        );
    }

    #[test]
    fn batches_must_be_json_arrays_of_objects() {
        assert_eq!(parse_batch(b"[]").unwrap().len(), 0);
        assert_eq!(parse_batch(br#"{"type":"x"}"#).unwrap().len(), 1);
        assert!(parse_batch(b"not json").is_err());
        assert!(parse_batch(b"[1,2]").is_err());
        assert!(parse_batch(b"\"x\"").is_err());
    }
}
