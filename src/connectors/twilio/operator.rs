//! Operator send: `POST /v1/messages` turns a small JSON request into an egress event on
//! `internal.egress.v1`, so an operator can send an SMS, WhatsApp or Conversations message from
//! Swagger UI without writing to the broker by hand. The egress consumer delivers it like any
//! other egress event.
//!
//! Guarded by `Authorization: Bearer` with `DEBUG_TOKEN` or `OPERATOR_TOKEN`; with neither
//! configured it is open in development and disabled (404) in production. A send the
//! configuration cannot carry out (no sender, no REST credentials, no bot identity) is refused
//! with 422 naming the setting, instead of being accepted and dead-lettered at once.

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::{
    address::{channel_type_of, Address},
    prerequisites::{missing_for, Recipient},
    shared::{Twilio, CONNECTOR, PLATFORM},
};
use crate::{
    auth::BearerAuth,
    bus::BusMessage,
    envelope::{
        stable_correlation_id, topics, Candidate, CandidateStatus, Egress, ExternalIdentity,
        Identity, Ingress, InternalEventV2, Media, Message, Routing, CHAT_MESSAGE_V1,
        ENVELOPE_VERSION,
    },
    error::{ApiError, ErrorBody},
    telemetry::trace_context::current_trace_id,
};

/// What the operator route needs: its guard and the connector (settings and publisher).
#[derive(Clone)]
pub struct OperatorContext {
    pub auth: BearerAuth,
    pub twilio: Twilio,
    /// How long the request body may take to arrive.
    pub body_read_timeout: std::time::Duration,
}

#[derive(OpenApi)]
#[openapi(
    paths(send_message),
    components(schemas(SendMessageRequest, SendMessageAccepted)),
    tags((name = "operator", description = "Operator actions (bearer DEBUG_TOKEN or OPERATOR_TOKEN)"))
)]
pub struct OperatorApi;

pub fn configure(context: OperatorContext, config: &mut web::ServiceConfig) {
    config
        .app_data(web::Data::new(context))
        .route("/v1/messages", web::post().to(send_message));
}

/// `ingress.source` and CloudEvents `source` of operator-sent events.
pub const OPERATOR_SOURCE: &str = "operator.ingress-egress";
/// `ingress.connector` of operator-sent events.
pub const OPERATOR_CONNECTOR: &str = "operator";
/// The most media URLs one message may carry (Twilio's limit).
const MAX_MEDIA: usize = 10;
/// The longest text accepted; egress splits anything over 1600 characters into parts.
const MAX_TEXT_CHARS: usize = 16_000;
/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 128;

/// A message to send through Twilio.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"to": "+15005550006", "text": "Hello from the operator console"}))]
pub struct SendMessageRequest {
    /// Recipient: a phone number in E.164 (`+15005550006`), a WhatsApp address
    /// (`whatsapp:+15005550006`) or a Conversation SID (`CH…`).
    #[schema(example = "+15005550006")]
    pub to: String,
    /// The text to send. May be empty only when `mediaUrls` is given. Longer than 1600
    /// characters is split into several messages.
    #[serde(default)]
    #[schema(example = "Hello from the operator console")]
    pub text: String,
    /// Public `http(s)` URLs of media to attach (MMS/WhatsApp), at most 10.
    #[serde(default)]
    #[schema(example = json!(["https://demo.twilio.com/owl.png"]))]
    pub media_urls: Vec<String>,
    /// Sender for phone and WhatsApp recipients: an E.164 number, a `whatsapp:+…` address or a
    /// Messaging Service SID (`MG…`). Defaults to `TWILIO_PHONE_NUMBER` /
    /// `TWILIO_MESSAGING_SERVICE_SID`. Not allowed for Conversation recipients.
    #[schema(example = "+15005550006")]
    pub from: Option<String>,
}

/// The egress event was accepted for delivery.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendMessageAccepted {
    /// The envelope's `correlationId`; status events for this send carry it too.
    #[schema(example = "0d6f2b1e-3c4a-4f5e-9b8a-7c6d5e4f3a2b")]
    pub correlation_id: Uuid,
    /// The bus `message_id` of the egress event.
    #[schema(example = "operator:0d6f2b1e-3c4a-4f5e-9b8a-7c6d5e4f3a2b")]
    pub message_id: String,
    /// `published` (the broker confirmed), `outboxed` (stored; published when the broker is
    /// back) or `duplicate` (the same `Idempotency-Key` was accepted moments ago).
    #[schema(example = "published")]
    pub delivery: String,
}

/// Send a message: publishes an egress event for the Twilio connector.
///
/// The event goes to `internal.egress.v1` with `role: assistant`, `egress.channel` = `to` and a
/// selected candidate holding `text`; the egress consumer sends it through Twilio's REST API and
/// publishes the outcome on `internal.egress.status.v1` under the returned `correlationId`.
/// A send the configuration cannot carry out (no sender for a phone number, no REST
/// credentials, no `TWILIO_IDENTITY` for a Conversation) is refused with 422 naming the setting.
/// A repeated `Idempotency-Key` yields the same ids and is not published twice within the
/// dedupe window.
#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "operator",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Optional key (up to 128 characters); the same key yields the same messageId and correlationId")),
    request_body(content = SendMessageRequest, content_type = "application/json",
        examples(
            ("1-sms" = (summary = "Text an E.164 number",
                value = json!({"to": "+15005550006", "text": "Hello from the operator console"}))),
            ("2-mms" = (summary = "Text with a picture, from a chosen sender",
                value = json!({"to": "+15005550006", "text": "Our opening hours", "mediaUrls": ["https://demo.twilio.com/owl.png"], "from": "+15005550001"}))),
            ("3-whatsapp" = (summary = "WhatsApp message",
                value = json!({"to": "whatsapp:+15005550006", "text": "Hello on WhatsApp"}))),
            ("4-conversation" = (summary = "Post into a Conversation as the bot identity",
                value = json!({"to": "CH0123456789abcdef0123456789abcdef", "text": "Hello, conversation"}))),
        )),
    responses(
        (status = 202, description = "Egress event accepted", body = SendMessageAccepted),
        (status = 400, description = "Malformed request (bad address, empty text, bad media URL)", body = ErrorBody,
            example = json!({"error": {"code": "bad_request", "message": "to: expected +E.164, whatsapp:+E.164 or a Conversation SID (CH…)"}})),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody,
            example = json!({"error": {"code": "unauthorized", "message": "missing or invalid bearer token"}})),
        (status = 404, description = "Disabled (production without DEBUG_TOKEN or OPERATOR_TOKEN)", body = ErrorBody,
            example = json!({"error": {"code": "not_found", "message": "not found"}})),
        (status = 415, description = "Not application/json", body = ErrorBody,
            example = json!({"error": {"code": "unsupported_media_type", "message": "expected Content-Type application/json"}})),
        (status = 422, description = "The service is not configured for this send; the message names the missing setting", body = ErrorBody,
            example = json!({"error": {"code": "not_configured", "message": "cannot send: TWILIO_PHONE_NUMBER (or TWILIO_MESSAGING_SERVICE_SID) is not set: replies to phone numbers and WhatsApp have no sender and are dead-lettered"}})),
        (status = 503, description = "Neither the broker nor the outbox took the event", body = ErrorBody,
            example = json!({"error": {"code": "unavailable", "message": "event could not be published nor stored; retry later"}})),
    )
)]
pub async fn send_message(
    req: HttpRequest,
    state: web::Data<OperatorContext>,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    // Authorise before reading anything: a stranger learns nothing from parse errors.
    state.auth.check(&req)?;
    let read = web::Json::<SendMessageRequest>::from_request(&req, &mut payload.into_inner());
    let request = tokio::time::timeout(state.body_read_timeout, read)
        .await
        .map_err(|_| ApiError::RequestTimeout(state.body_read_timeout))??
        .into_inner();
    Ok(accept(&req, &state, request).await?)
}

async fn accept(
    req: &HttpRequest,
    state: &OperatorContext,
    request: SendMessageRequest,
) -> Result<HttpResponse, ApiError> {
    let idempotency_key = idempotency_key(req)?;
    let target = validate(&request)?;
    let recipient = Recipient::of(&target, request.from.is_some());
    if let Some(missing) = missing_for(state.twilio.settings(), recipient) {
        return Err(ApiError::NotConfigured(format!("cannot send: {missing}")));
    }
    let (message_id, correlation_id) = match &idempotency_key {
        Some(key) => {
            let message_id = format!("operator:{key}");
            let correlation_id = stable_correlation_id(&message_id);
            (message_id, correlation_id)
        }
        None => {
            let correlation_id = Uuid::new_v4();
            (format!("operator:{correlation_id}"), correlation_id)
        }
    };
    let envelope = egress_event(&request, target, &message_id, correlation_id, Utc::now());
    let message = BusMessage::json(
        topics::EGRESS,
        message_id.clone(),
        correlation_id.to_string(),
        &envelope.event_type,
        OPERATOR_SOURCE,
        &envelope,
    )
    .map_err(|e| ApiError::BadRequest(format!("cannot encode event: {e}")))?;

    let publisher = state.twilio.publisher();
    let result = if idempotency_key.is_some() {
        publisher.publish_once(message).await
    } else {
        publisher.publish(message).await
    };
    let delivery = result.map_err(|error| {
        tracing::error!(%error, %correlation_id, "operator send not accepted");
        ApiError::Unavailable("event could not be published nor stored; retry later".to_owned())
    })?;
    // No recipient or text at info level.
    tracing::info!(
        %correlation_id,
        message_id,
        channel = channel_type_of(&request.to, false),
        media = request.media_urls.len(),
        delivery = delivery.as_str(),
        "operator send accepted"
    );
    Ok(HttpResponse::Accepted().json(SendMessageAccepted {
        correlation_id,
        message_id,
        delivery: delivery.as_str().to_owned(),
    }))
}

fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[2..].chars().all(|c| c.is_ascii_hexdigit())
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map(str::trim)
        .map_err(|_| ApiError::BadRequest("Idempotency-Key: must be visible ASCII".to_owned()))?;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )));
    }
    Ok(Some(key.to_owned()))
}

/// Checks the request; error messages never echo the address or the text.
pub fn validate(request: &SendMessageRequest) -> Result<Address, ApiError> {
    let bad = |message: &str| ApiError::BadRequest(message.to_owned());
    let target = Address::parse(request.to.trim())
        .map_err(|_| bad("to: expected +E.164, whatsapp:+E.164 or a Conversation SID (CH…)"))?;
    if request.text.trim().is_empty() && request.media_urls.is_empty() {
        return Err(bad("text: must not be empty unless mediaUrls is given"));
    }
    if request.text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::BadRequest(format!(
            "text: at most {MAX_TEXT_CHARS} characters"
        )));
    }
    if request.media_urls.len() > MAX_MEDIA {
        return Err(ApiError::BadRequest(format!(
            "mediaUrls: at most {MAX_MEDIA} entries"
        )));
    }
    for url in &request.media_urls {
        let parsed = url::Url::parse(url)
            .map_err(|_| bad("mediaUrls: each entry must be an absolute http(s) URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(bad("mediaUrls: each entry must be an absolute http(s) URL"));
        }
    }
    if let Some(from) = request.from.as_deref().map(str::trim) {
        if !target.is_messaging() {
            return Err(bad(
                "from: not used for Conversations (the bot posts as TWILIO_IDENTITY)",
            ));
        }
        let valid =
            Address::parse(from).is_ok_and(|sender| sender.is_phone_number()) || is_sid(from, "MG");
        if !valid {
            return Err(bad(
                "from: expected +E.164, whatsapp:+E.164 or a Messaging Service SID (MG…)",
            ));
        }
    }
    Ok(target)
}

/// The egress envelope for a validated request.
pub fn egress_event(
    request: &SendMessageRequest,
    target: Address,
    message_id: &str,
    correlation_id: Uuid,
    now: chrono::DateTime<Utc>,
) -> InternalEventV2 {
    let to = request.to.trim().to_owned();
    let text = Some(request.text.clone()).filter(|t| !t.trim().is_empty());

    let mut twilio = Map::new();
    if let Some(from) = request.from.as_deref().map(str::trim) {
        if from.starts_with("MG") {
            twilio.insert("messagingServiceSid".into(), from.into());
        } else {
            twilio.insert("from".into(), from.into());
        }
    }
    let mut egress_metadata = Map::new();
    if !twilio.is_empty() {
        egress_metadata.insert("twilio".into(), Value::Object(twilio));
    }

    let mut identity_metadata = Map::new();
    identity_metadata.insert("channelType".into(), channel_type_of(&to, false).into());
    if !target.is_messaging() {
        identity_metadata.insert("conversationSid".into(), to.clone().into());
    }

    let media: Vec<Media> = request
        .media_urls
        .iter()
        .map(|url| Media {
            url: Some(url.clone()),
            sid: None,
            content_type: None,
            size: None,
            filename: None,
        })
        .collect();

    let mut metadata = Map::new();
    metadata.insert("origin".into(), json!("operator"));

    InternalEventV2 {
        v: ENVELOPE_VERSION.to_owned(),
        correlation_id,
        trace_id: current_trace_id(),
        event_type: CHAT_MESSAGE_V1.to_owned(),
        ingress: Ingress {
            ingress_at: now,
            source: OPERATOR_SOURCE.to_owned(),
            connector: OPERATOR_CONNECTOR.to_owned(),
            channel: to.clone(),
        },
        identity: Identity {
            external: ExternalIdentity {
                id: to.clone(),
                platform: PLATFORM.to_owned(),
                display_name: None,
                metadata: identity_metadata,
            },
            user: None,
        },
        egress: Egress {
            destination: topics::EGRESS.to_owned(),
            connector: CONNECTOR.to_owned(),
            kind: "chat".to_owned(),
            channel: Some(to),
            metadata: egress_metadata,
        },
        routing: Routing::initial(),
        message: Some(Message {
            id: message_id.to_owned(),
            role: "assistant".to_owned(),
            text: text.clone(),
            media,
            raw_platform_payload: None,
        }),
        payload: None,
        external_event: None,
        annotations: None,
        candidates: text.map(|text| {
            vec![Candidate {
                id: format!("{message_id}#0"),
                kind: "text".to_owned(),
                source: OPERATOR_SOURCE.to_owned(),
                created_at: now,
                status: CandidateStatus::Selected,
                priority: 0,
                confidence: None,
                text: Some(text),
                format: Some("text".to_owned()),
                reason: Some("operator send".to_owned()),
                metadata: None,
            }]
        }),
        qos: None,
        errors: None,
        metadata: Some(metadata),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(to: &str, text: &str) -> SendMessageRequest {
        SendMessageRequest {
            to: to.to_owned(),
            text: text.to_owned(),
            media_urls: Vec::new(),
            from: None,
        }
    }

    #[test]
    fn recipients_are_classified() {
        assert!(validate(&request("+15005550006", "hi")).is_ok());
        assert!(validate(&request("whatsapp:+15005550006", "hi")).is_ok());
        assert!(validate(&request("CH0123456789abcdef0123456789abcdef", "hi")).is_ok());
        for bad in [
            "15005550006",
            "whatsapp:15005550006",
            "CH123",
            "",
            "+1 500 555",
        ] {
            assert!(validate(&request(bad, "hi")).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validation_errors_do_not_echo_input() {
        let err = validate(&request("+1555", "secret text")).unwrap_err();
        assert!(!err.to_string().contains("+1555"));
        assert!(validate(&request("+15005550006", "  ")).is_err());
        let mut with_media = request("+15005550006", "");
        with_media.media_urls = vec!["https://example.com/a.png".into()];
        assert_eq!(
            validate(&with_media).unwrap(),
            Address::Phone("+15005550006".into())
        );
        with_media.media_urls = vec!["ftp://example.com/a.png".into()];
        assert!(validate(&with_media).is_err());
        let mut conversation = request("CH0123456789abcdef0123456789abcdef", "hi");
        conversation.from = Some("+15005550006".into());
        assert!(validate(&conversation).is_err());
    }

    #[test]
    fn the_event_selects_the_text_for_the_twilio_connector() {
        let mut req = request("whatsapp:+15005550006", "Hello");
        req.from = Some("MG0123456789abcdef0123456789abcdef".into());
        let id = Uuid::new_v4();
        let target = validate(&req).unwrap();
        let event = egress_event(&req, target, "operator:x", id, Utc::now());
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["egress"]["connector"], "twilio");
        assert_eq!(json["egress"]["channel"], "whatsapp:+15005550006");
        assert_eq!(
            json["egress"]["metadata"]["twilio"]["messagingServiceSid"],
            "MG0123456789abcdef0123456789abcdef"
        );
        assert_eq!(json["message"]["role"], "assistant");
        assert_eq!(json["candidates"][0]["status"], "selected");
        assert_eq!(json["candidates"][0]["text"], "Hello");
        assert_eq!(json["correlationId"], id.to_string());
    }
}
