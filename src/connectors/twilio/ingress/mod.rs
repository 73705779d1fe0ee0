//! Twilio's ingress wing: the webhook routes and their OpenAPI descriptions. What each webhook
//! means lives beside them:
//! - [`webhook`] reads a request safely (POST or, where Twilio allows it, GET) and checks its
//!   [`signature`]; [`deadline`] bounds each webhook's work by Twilio's timeout;
//! - [`sms`], [`conversations`] (with [`conversation_message`]), [`status`] and
//!   [`event_streams`] turn a verified webhook into events;
//! - [`envelope`] is the one place an inbound chat message becomes an `InternalEventV2`;
//! - [`publish`] publishes them and answers Twilio; [`context`] is what every handler gets.
//!
//! A new Twilio webhook is a handler here, a module beside these, and a line in [`configure`].

pub(crate) mod context;
pub(crate) mod conversation_message;
pub(crate) mod conversations;
pub(crate) mod deadline;
pub(crate) mod envelope;
pub(crate) mod event_streams;
pub(crate) mod publish;
pub mod signature;
pub(crate) mod sms;
pub(crate) mod status;
pub mod webhook;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use utoipa::OpenApi;

pub(crate) use context::IngressContext;
use deadline::Webhook;
use publish::{handle, publish_envelope};

use crate::error::{ApiError, ErrorBody};

#[derive(OpenApi)]
#[openapi(
    paths(
        sms_webhook,
        sms_webhook_get,
        conversations_webhook,
        conversations_webhook_get,
        status_webhook,
        event_streams_webhook,
        event_streams_webhook_get
    ),
    components(schemas(
        sms::InboundSmsForm,
        conversations::ConversationsEventForm,
        status::StatusCallbackForm,
        status::MessageStatusEvent,
        event_streams::TwilioCloudEvent,
        ErrorBody
    )),
    tags((name = "twilio", description = "Webhooks Twilio calls; every request must carry a valid X-Twilio-Signature"))
)]
pub struct TwilioApi;

pub fn configure(context: IngressContext, config: &mut web::ServiceConfig) {
    config
        .app_data(web::Data::new(context))
        .route("/webhooks/twilio/sms", web::post().to(sms_webhook))
        .route("/webhooks/twilio/sms", web::get().to(sms_webhook_get))
        .route(
            "/webhooks/twilio/conversations",
            web::post().to(conversations_webhook),
        )
        .route(
            "/webhooks/twilio/conversations",
            web::get().to(conversations_webhook_get),
        )
        .route("/webhooks/twilio/status", web::post().to(status_webhook))
        .route(
            "/webhooks/twilio/event-streams",
            web::post().to(event_streams_webhook),
        )
        .route(
            "/webhooks/twilio/event-streams",
            web::get().to(event_streams_webhook_get),
        );
}

/// Twilio Conversations post-event webhooks.
///
/// - `onMessageAdded` → an `InternalEventV2` (`chat.message.v1`) on `internal.ingress.v1` whose
///   `ingress.channel` and `egress.channel` are the Conversation SID and whose
///   `identity.external.id` is the author. Messages written by `TWILIO_IDENTITY` (the bot's
///   own replies) are acknowledged and not published.
/// - `onConversationAdded`, `onParticipantAdded` → when `TWILIO_IDENTITY` is set, the bot is
///   added to the conversation in the background (retried on failure; "already a
///   participant" is success); nothing is published.
/// - `onDeliveryUpdated` → a status event on `internal.egress.status.v1`.
/// - Pre-event webhooks (`onMessageAdd`, `onConversationAdd`, … — the names without "ed") are
///   not used; pointed here anyway, they get 200 with an empty body (the action proceeds
///   unchanged), are not published and are counted in `ignored_events_total`.
/// - Any other event type → 200, not published, counted in `ignored_events_total`.
///
/// Answered within Twilio's 5 s: the broker's confirm wait is cut short to leave time for the
/// outbox.
#[utoipa::path(
    post,
    path = "/webhooks/twilio/conversations",
    tag = "twilio",
    params(("X-Twilio-Signature" = String, Header, description = "Twilio's HMAC-SHA1 signature of the request")),
    request_body(content = conversations::ConversationsEventForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Accepted (published, deduplicated or deliberately ignored); empty TwiML, or an empty body for a pre-event webhook", headers(("X-Ingress-Delivery" = String, description = "What became of the event: published, outboxed, duplicate (not published again) or ignored")), content_type = "text/xml", body = String, example = json!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>")),
        (status = 400, description = "Malformed webhook", body = ErrorBody),
        (status = 403, description = "Missing or invalid X-Twilio-Signature", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = ErrorBody),
        (status = 503, description = "Neither the broker nor the outbox could take the event; Twilio retries", body = ErrorBody),
    )
)]
pub async fn conversations_webhook(
    req: HttpRequest,
    payload: web::Payload,
    twilio: web::Data<IngressContext>,
) -> Result<HttpResponse, ApiError> {
    let twilio: &IngressContext = &twilio;
    handle(twilio, Webhook::Conversations, |deadline| async move {
        let params = twilio.verifier().params(&req, payload).await?;
        conversations::handle_event(twilio, &params, deadline).await
    })
    .await
}

/// Twilio Conversations webhooks configured with method GET: the same events and answers as
/// the POST route, the parameters in the query string, signed over the full URL.
#[utoipa::path(
    get,
    path = "/webhooks/twilio/conversations",
    tag = "twilio",
    params(
        ("X-Twilio-Signature" = String, Header, description = "Twilio's HMAC-SHA1 signature of the full URL, query included"),
        conversations::ConversationsEventForm,
    ),
    responses(
        (status = 200, description = "Accepted (published, deduplicated or deliberately ignored); empty TwiML, or an empty body for a pre-event webhook", content_type = "text/xml", body = String, example = json!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>")),
        (status = 400, description = "Malformed webhook", body = ErrorBody),
        (status = 403, description = "Missing or invalid X-Twilio-Signature", body = ErrorBody),
        (status = 503, description = "Neither the broker nor the outbox could take the event", body = ErrorBody),
    )
)]
pub async fn conversations_webhook_get(
    req: HttpRequest,
    payload: web::Payload,
    twilio: web::Data<IngressContext>,
) -> Result<HttpResponse, ApiError> {
    conversations_webhook(req, payload, twilio).await
}

/// Programmable Messaging status callbacks (the `StatusCallback` URL egress sets).
///
/// Each callback becomes a `StatusEvent` on `internal.egress.status.v1`, deduplicated on
/// MessageSid **and** MessageStatus: every status of a message is published, an identical
/// retry once. Error codes (e.g. 21610 opted out, 30007 filtered) are carried through. The
/// `correlationId` query parameter egress puts on the callback URL (it is covered by the
/// signature) is copied into the event.
#[utoipa::path(
    post,
    path = "/webhooks/twilio/status",
    tag = "twilio",
    params(
        ("X-Twilio-Signature" = String, Header, description = "Twilio's HMAC-SHA1 signature of the request"),
        ("correlationId" = Option<String>, Query, description = "Correlation id of the egress event that sent the message", example = "4f3a59f0-673b-5d8e-86f4-65e088894afb"),
        ("part" = Option<u32>, Query, description = "Part index when egress split a long text into several messages (copied to metadata.part)", example = 1),
    ),
    request_body(content = status::StatusCallbackForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Accepted; empty TwiML. Publishes a StatusEvent (schema `StatusEvent`) on internal.egress.status.v1", headers(("X-Ingress-Delivery" = String, description = "What became of the event: published, outboxed, duplicate (not published again) or ignored")), content_type = "text/xml", body = String, example = json!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>")),
        (status = 400, description = "Malformed callback (no MessageSid, MessageStatus or To)", body = ErrorBody),
        (status = 403, description = "Missing or invalid X-Twilio-Signature", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = ErrorBody),
        (status = 503, description = "Neither the broker nor the outbox could take the event; Twilio retries", body = ErrorBody),
    )
)]
pub async fn status_webhook(
    req: HttpRequest,
    payload: web::Payload,
    twilio: web::Data<IngressContext>,
) -> Result<HttpResponse, ApiError> {
    let twilio: &IngressContext = &twilio;
    handle(twilio, Webhook::Status, |deadline| async move {
        let params = twilio.verifier().form(&req, payload).await?;
        let correlation_id = status::correlation_id_from_query(req.query_string());
        let mut event = status::from_status_callback(&params, correlation_id, Utc::now())?;
        if let Some(part) = status::query_param(req.query_string(), "part") {
            let value = part.parse::<u64>().map_or_else(|_| part.into(), Into::into);
            event.metadata.insert("part".to_owned(), value);
        }
        if let Some(part_key) = status::query_param(req.query_string(), "partKey") {
            status::complete_ledger(twilio, &part_key, &event.message_sid).await;
        }
        status::publish_status(twilio, &event, deadline).await
    })
    .await
}

/// Twilio Event Streams webhook sink: a JSON array of CloudEvents, signed through the
/// `bodySHA256` query parameter.
///
/// `com.twilio.messaging.inbound-message.received` and `com.twilio.conversations.message.added`
/// become the same envelopes as the SMS and Conversations webhooks (same `message_id`, so a
/// message seen both ways is published once). Other types are acknowledged and ignored
/// (counted in `ignored_events_total`); a malformed event in a batch is skipped and counted,
/// because Event Streams discards a whole batch answered with a 4xx other than 429.
///
/// An inbound MMS arrives without media URLs: its media are listed through Twilio's REST API
/// (`ListMedia`) and the envelope carries them as the SMS webhook's would. When that list
/// cannot be had yet (Twilio 429/5xx, or not before the deadline) the batch is answered 503 and
/// Event Streams redelivers it (it retries 5xx for up to four hours); events already published
/// are not published again. The batch's events are published concurrently (events of one
/// sender or conversation in order) and answered within Twilio's 5 s. Body cap:
/// `TWILIO_EVENT_STREAMS_MAX_BODY_BYTES` (1 MiB by default).
#[utoipa::path(
    post,
    path = "/webhooks/twilio/event-streams",
    tag = "twilio",
    params(
        ("X-Twilio-Signature" = String, Header, description = "Twilio's HMAC-SHA1 signature of the URL (which carries bodySHA256)"),
        ("bodySHA256" = String, Query, description = "Hex SHA-256 of the raw body", example = "0edc7438b14d9f155612f54e431e6fb6b78a7021c32ab3d44974685d008fc501"),
    ),
    request_body(content = Vec<event_streams::TwilioCloudEvent>, content_type = "application/json", example = json!([
        {
            "specversion": "1.0",
            "type": "com.twilio.messaging.inbound-message.received",
            "source": "/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages/SM0beb93633d34954fb43920c1e22b83fc.json",
            "id": "EZ0beb93633d34954fb43920c1e22b83fc",
            "dataschema": "https://events-schemas.twilio.com/Messaging.InboundMessageV1/6",
            "datacontenttype": "application/json",
            "time": "2024-05-14T09:40:00.000Z",
            "data": {"messageSid": "SM0beb93633d34954fb43920c1e22b83fc", "accountSid": "AC00000000000000000000000000000001", "from": "+14155550100", "to": "+15005550006", "body": "Event Streams says hi", "numMedia": 0, "numSegments": 1, "messagingServiceSid": "MG00000000000000000000000000000001"}
        },
        {
            "specversion": "1.0",
            "type": "com.twilio.conversations.message.added",
            "source": "/v1/Services/IS00000000000000000000000000000001/Conversations/CH00000000000000000000000000000001/Messages/IM24bb10c5b4f5c48ec2569d0e4f5ecbbb",
            "id": "EZ24bb10c5b4f5c48ec2569d0e4f5ecbbb",
            "dataschema": "https://events-schemas.twilio.com/Conversations.MessageAdded/2",
            "datacontenttype": "application/json",
            "time": "2024-05-14T09:41:00.000Z",
            "data": {"AccountSid": "AC00000000000000000000000000000001", "Author": "+14155550100", "ParticipantSid": "MB71d53344bb55f6732abde05327b5cddf", "ConversationSid": "CH00000000000000000000000000000001", "MessageSid": "IM24bb10c5b4f5c48ec2569d0e4f5ecbbb", "Index": 7, "MessageBody": "Any update on my refund?", "Attributes": {}}
        }
    ])),
    responses(
        (status = 200, description = "Batch accepted", headers(("X-Ingress-Delivery" = String, description = "What became of the event: published, outboxed, duplicate (not published again) or ignored")), content_type = "text/xml", body = String, example = json!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>")),
        (status = 400, description = "Body is not a JSON array of CloudEvent objects", body = ErrorBody),
        (status = 403, description = "Missing or invalid X-Twilio-Signature or bodySHA256", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 503, description = "Neither the broker nor the outbox could take an event, or an MMS's media could not be listed yet; Twilio retries the batch", body = ErrorBody),
    )
)]
pub async fn event_streams_webhook(
    req: HttpRequest,
    payload: web::Payload,
    twilio: web::Data<IngressContext>,
) -> Result<HttpResponse, ApiError> {
    let twilio: &IngressContext = &twilio;
    handle(twilio, Webhook::EventStreams, |deadline| async move {
        let body = twilio.verifier().json(&req, payload).await?;
        event_streams::handle_batch(twilio, &body, deadline).await
    })
    .await
}

/// An Event Streams webhook sink configured with method GET. Twilio lets a sink use GET but
/// does not document where such a request carries the batch; this route takes it exactly as
/// the POST route does (JSON body, signed through the URL's `bodySHA256`). Prefer POST.
#[utoipa::path(
    get,
    path = "/webhooks/twilio/event-streams",
    tag = "twilio",
    params(
        ("X-Twilio-Signature" = String, Header, description = "Twilio's HMAC-SHA1 signature of the URL (which carries bodySHA256)"),
        ("bodySHA256" = String, Query, description = "Hex SHA-256 of the raw body", example = "0edc7438b14d9f155612f54e431e6fb6b78a7021c32ab3d44974685d008fc501"),
    ),
    request_body(content = Vec<event_streams::TwilioCloudEvent>, content_type = "application/json"),
    responses(
        (status = 200, description = "Batch accepted", content_type = "text/xml", body = String, example = json!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>")),
        (status = 400, description = "Body is not a JSON array of CloudEvent objects", body = ErrorBody),
        (status = 403, description = "Missing or invalid X-Twilio-Signature or bodySHA256", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 503, description = "Neither the broker nor the outbox could take an event, or an MMS's media could not be listed yet; Twilio retries the batch", body = ErrorBody),
    )
)]
pub async fn event_streams_webhook_get(
    req: HttpRequest,
    payload: web::Payload,
    twilio: web::Data<IngressContext>,
) -> Result<HttpResponse, ApiError> {
    event_streams_webhook(req, payload, twilio).await
}

/// Inbound SMS, MMS and WhatsApp messages (Programmable Messaging "A message comes in").
///
/// The signature is checked over `PUBLIC_BASE_URL` + path + query. A valid message becomes an
/// `InternalEventV2` on `internal.ingress.v1` (or the durable outbox when the broker is away)
/// before the answer is sent, within Twilio's 15 s. A retry of the same MessageSid is answered
/// 200 and not published again.
#[utoipa::path(
    post,
    path = "/webhooks/twilio/sms",
    tag = "twilio",
    params(("X-Twilio-Signature" = String, Header, description = "Twilio's HMAC-SHA1 signature of the request")),
    request_body(content = sms::InboundSmsForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Accepted; empty TwiML", headers(("X-Ingress-Delivery" = String, description = "What became of the event: published, outboxed, duplicate (not published again) or ignored")), content_type = "text/xml", body = String, example = json!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>")),
        (status = 400, description = "Malformed webhook", body = ErrorBody),
        (status = 403, description = "Missing or invalid X-Twilio-Signature", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = ErrorBody),
        (status = 503, description = "Neither the broker nor the outbox could take the event; Twilio retries", body = ErrorBody),
    )
)]
pub async fn sms_webhook(
    req: HttpRequest,
    payload: web::Payload,
    twilio: web::Data<IngressContext>,
) -> Result<HttpResponse, ApiError> {
    let twilio: &IngressContext = &twilio;
    handle(twilio, Webhook::Sms, |deadline| async move {
        let params = twilio.verifier().params(&req, payload).await?;
        let envelope = sms::inbound_message_envelope(&params, Utc::now())?;
        sms::remember_consent(twilio, &params).await;
        publish_envelope(twilio, &envelope, deadline).await
    })
    .await
}

/// Inbound messages from a number or Messaging Service whose webhook is configured with method
/// GET: the same fields as the POST form, in the query string; the signature covers the full
/// URL.
#[utoipa::path(
    get,
    path = "/webhooks/twilio/sms",
    tag = "twilio",
    params(
        ("X-Twilio-Signature" = String, Header, description = "Twilio's HMAC-SHA1 signature of the full URL, query included"),
        sms::InboundSmsForm,
    ),
    responses(
        (status = 200, description = "Accepted; empty TwiML", content_type = "text/xml", body = String, example = json!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>")),
        (status = 400, description = "Malformed webhook", body = ErrorBody),
        (status = 403, description = "Missing or invalid X-Twilio-Signature", body = ErrorBody),
        (status = 503, description = "Neither the broker nor the outbox could take the event", body = ErrorBody),
    )
)]
pub async fn sms_webhook_get(
    req: HttpRequest,
    payload: web::Payload,
    twilio: web::Data<IngressContext>,
) -> Result<HttpResponse, ApiError> {
    sms_webhook(req, payload, twilio).await
}
