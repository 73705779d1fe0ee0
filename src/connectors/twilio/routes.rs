//! Twilio webhook routes and their OpenAPI descriptions.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use utoipa::OpenApi;

use super::{sms, TwilioConnector, INGRESS_SOURCE};
use crate::{
    bus::BusMessage,
    envelope::{topics, InternalEventV2},
    error::{ApiError, ErrorBody},
    publisher::Delivery,
};

/// The empty TwiML document: acknowledge, send no reply from Twilio itself.
pub const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

#[derive(OpenApi)]
#[openapi(
    paths(sms_webhook),
    components(schemas(sms::InboundSmsForm, ErrorBody)),
    tags((name = "twilio", description = "Webhooks Twilio calls; every request must carry a valid X-Twilio-Signature"))
)]
pub struct TwilioApi;

pub fn configure(connector: TwilioConnector, config: &mut web::ServiceConfig) {
    config
        .app_data(web::Data::new(connector))
        .route("/webhooks/twilio/sms", web::post().to(sms_webhook));
}

/// Inbound SMS, MMS and WhatsApp messages (Programmable Messaging "A message comes in").
///
/// The signature is checked over `PUBLIC_BASE_URL` + path + query. A valid message becomes an
/// `InternalEventV2` on `internal.ingress.v1` (or the durable outbox when the broker is away)
/// before the answer is sent. A retry of the same MessageSid is answered 200 and not published
/// again.
#[utoipa::path(
    post,
    path = "/webhooks/twilio/sms",
    tag = "twilio",
    params(("X-Twilio-Signature" = String, Header, description = "Twilio's HMAC-SHA1 signature of the request")),
    request_body(content = sms::InboundSmsForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Accepted; empty TwiML", content_type = "text/xml", body = String, example = json!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>")),
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
    twilio: web::Data<TwilioConnector>,
) -> Result<HttpResponse, ApiError> {
    handle(&twilio, "sms", async {
        let params = twilio.verifier().form(&req, payload).await?;
        let envelope = sms::inbound_message_envelope(&params, Utc::now())?;
        publish_envelope(&twilio, &envelope).await
    })
    .await
}

/// Publishes an inbound envelope on `internal.ingress.v1`, at most once per message id within
/// the dedupe window.
pub(crate) async fn publish_envelope(
    twilio: &TwilioConnector,
    envelope: &InternalEventV2,
) -> Result<Outcome, ApiError> {
    let message_sid = envelope
        .message
        .as_ref()
        .map(|m| m.id.as_str())
        .unwrap_or_default();
    let message = BusMessage::json(
        topics::INGRESS,
        sms::message_id(message_sid),
        envelope.correlation_id.to_string(),
        &envelope.event_type,
        INGRESS_SOURCE,
        envelope,
    )
    .map_err(|e| ApiError::BadRequest(format!("cannot encode event: {e}")))?;
    let delivery = twilio
        .publisher()
        .publish_once(message)
        .await
        .map_err(|error| {
            tracing::error!(%error, "webhook not accepted");
            twilio.record_error(error.to_string());
            ApiError::Unavailable("event could not be stored; retry later".to_owned())
        })?;
    tracing::info!(
        message_sid,
        correlation_id = %envelope.correlation_id,
        delivery = delivery.as_str(),
        "inbound message accepted"
    );
    Ok(Outcome::Delivered(delivery))
}

/// How a webhook ended, for the response and the metrics.
pub(crate) enum Outcome {
    Delivered(Delivery),
    /// Valid but nothing to publish (e.g. an event type we do not use).
    Ignored,
}

/// Runs a webhook handler: measures it, counts its outcome and answers with empty TwiML.
pub(crate) async fn handle(
    twilio: &TwilioConnector,
    route: &'static str,
    work: impl std::future::Future<Output = Result<Outcome, ApiError>>,
) -> Result<HttpResponse, ApiError> {
    let metrics = twilio.metrics();
    let timer = metrics
        .webhook_duration
        .with_label_values(&[route])
        .start_timer();
    let result = work.await;
    timer.observe_duration();
    let outcome = match &result {
        Ok(Outcome::Delivered(delivery)) => delivery.as_str(),
        Ok(Outcome::Ignored) => "ignored",
        Err(ApiError::PayloadTooLarge { .. }) => "too_large",
        Err(error) => error.code(),
    };
    metrics
        .webhook_requests
        .with_label_values(&[route, outcome])
        .inc();
    match result {
        Ok(_) => {
            twilio.record_inbound();
            Ok(HttpResponse::Ok()
                .content_type("text/xml; charset=utf-8")
                .body(EMPTY_TWIML))
        }
        Err(error) => {
            if matches!(error, ApiError::BadSignature(_)) {
                tracing::warn!(route, reason = %error, "webhook rejected: bad signature");
            } else {
                tracing::info!(route, reason = %error, "webhook rejected");
            }
            Err(error)
        }
    }
}
