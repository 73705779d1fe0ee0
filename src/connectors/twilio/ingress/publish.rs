//! Publishing what a webhook carried and answering Twilio: at most once per message id within
//! the dedupe window, before the webhook's [`Deadline`], 503 when neither the broker nor the
//! outbox took it, what became of the event in the answer's `X-Ingress-Delivery` header, and the
//! metrics every webhook reports.

use actix_web::HttpResponse;
use tokio::time::Instant;

use super::{
    context::IngressContext,
    deadline::{Deadline, Webhook},
    envelope::message_id,
};
use crate::{
    bus::BusMessage,
    connectors::twilio::shared::{CONNECTOR, INGRESS_SOURCE},
    envelope::{topics, InternalEventV2},
    error::ApiError,
    publisher::{Delivery, DELIVERY_HEADER},
};

/// The empty TwiML document: acknowledge, send no reply from Twilio itself.
pub const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

/// Publishes an inbound envelope on `internal.ingress.v1`, at most once per message id within
/// the dedupe window.
pub(crate) async fn publish_envelope(
    twilio: &IngressContext,
    envelope: &InternalEventV2,
    deadline: Deadline,
) -> Result<WebhookOutcome, ApiError> {
    let message_sid = envelope
        .message
        .as_ref()
        .map(|m| m.id.as_str())
        .unwrap_or_default();
    let message = BusMessage::json(
        topics::INGRESS,
        message_id(message_sid),
        envelope.correlation_id.to_string(),
        &envelope.event_type,
        INGRESS_SOURCE,
        envelope,
    )
    .map_err(|e| ApiError::BadRequest(format!("cannot encode event: {e}")))?;
    let delivery = publish_once(twilio, message, deadline).await?;
    tracing::info!(
        message_sid,
        correlation_id = %envelope.correlation_id,
        delivery = delivery.as_str(),
        "inbound message accepted"
    );
    Ok(WebhookOutcome::Delivered(delivery))
}

/// Publishes a webhook's event at most once per `message_id` within the dedupe window, in the
/// broker or the outbox before `deadline`; when neither takes it, answers 503.
pub(crate) async fn publish_once(
    twilio: &IngressContext,
    message: BusMessage,
    deadline: Deadline,
) -> Result<Delivery, ApiError> {
    twilio
        .publisher()
        .publish_once_by(message, deadline.instant())
        .await
        .map_err(|error| {
            tracing::error!(%error, "webhook event not accepted");
            twilio.record_error(error.to_string());
            ApiError::Unavailable("event could not be stored; retry later".to_owned())
        })
}

/// How a webhook ended, for the response and the metrics.
pub(crate) enum WebhookOutcome {
    Delivered(Delivery),
    /// Valid but nothing to publish (e.g. an event type we do not use).
    Ignored,
    /// A Conversations pre-event webhook (`onMessageAdd`, …): not used, and answered with the
    /// empty body that lets the action proceed unchanged (pre-event webhooks read JSON, so
    /// TwiML would be wrong there).
    PreEvent,
}

impl WebhookOutcome {
    /// The outcome's name in metrics and in the [`DELIVERY_HEADER`] of the answer.
    fn as_str(&self) -> &'static str {
        match self {
            WebhookOutcome::Delivered(delivery) => delivery.as_str(),
            WebhookOutcome::Ignored | WebhookOutcome::PreEvent => "ignored",
        }
    }
}

/// Runs a webhook handler: gives it its [`Deadline`], measures it, counts its outcome and
/// answers with empty TwiML (an empty body for pre-events).
pub(crate) async fn handle<F, W>(
    twilio: &IngressContext,
    webhook: Webhook,
    work: W,
) -> Result<HttpResponse, ApiError>
where
    W: FnOnce(Deadline) -> F,
    F: std::future::Future<Output = Result<WebhookOutcome, ApiError>>,
{
    let deadline = Deadline::for_webhook(webhook, Instant::now());
    let route = webhook.route();
    let metrics = twilio.metrics();
    let timer = metrics
        .webhook_duration
        .with_label_values(&[CONNECTOR, route])
        .start_timer();
    let result = work(deadline).await;
    timer.observe_duration();
    let outcome = match &result {
        Ok(outcome) => outcome.as_str(),
        Err(ApiError::PayloadTooLarge { .. }) => "too_large",
        Err(error) => error.code(),
    };
    metrics
        .webhook_requests
        .with_label_values(&[CONNECTOR, route, outcome])
        .inc();
    match result {
        Ok(WebhookOutcome::PreEvent) => Ok(HttpResponse::Ok()
            .insert_header((DELIVERY_HEADER, outcome))
            .finish()),
        Ok(_) => {
            twilio.record_inbound();
            Ok(HttpResponse::Ok()
                .content_type("text/xml; charset=utf-8")
                .insert_header((DELIVERY_HEADER, outcome))
                .body(EMPTY_TWIML))
        }
        Err(error) => {
            // A client's mistake, not ours; a signature that does not match is also a warning
            // with the URL that was checked (see `webhook`).
            tracing::info!(route, reason = %error, "webhook rejected");
            Err(error)
        }
    }
}
