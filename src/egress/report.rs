//! How an egress event ends: its outcome published (an [`EgressStatusEvent`], plus a
//! [`DeadLetter`] when it was not sent), counted, and only then the delivery settled. When the
//! outcome cannot be recorded anywhere (neither broker nor outbox) the delivery is requeued, so
//! nothing is acked without a trace.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use super::{
    engine::{Engine, Plan},
    events::{
        dead_letter_message, status_message, DeadLetter, EgressStatusEvent, Outcome, PartReport,
    },
    select::{Parsed, Rejection},
    sink::SendFailure,
};
use crate::bus::delivery::Received;

/// Pause before requeueing an event whose outcome could not be recorded, so a broken outbox
/// does not turn into a hot loop.
pub(super) const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// The `connector` label of events no sink claimed.
const UNROUTED: &str = "none";

impl Engine {
    /// Every part was accepted.
    pub(super) async fn sent(
        &self,
        received: Received,
        plan: &Plan,
        reports: Vec<PartReport>,
        attempts: u32,
    ) {
        let connector = plan.route.sink.connector();
        self.count(connector, Outcome::Sent, None);
        let status = self.status_event(plan, &received, Outcome::Sent, &reports, attempts, None);
        if let Err(error) = self
            .publisher
            .publish(status_message(&plan.key, &status))
            .await
        {
            // The platform accepted the message: acking is right; only the report is lost.
            tracing::error!(correlation_id = %plan.correlation_id, %error, "sent, but the status event could not be published");
        }
        tracing::info!(correlation_id = %plan.correlation_id, connector, parts = reports.len(), attempts, "egress event sent");
        self.ack(&received, "acked");
    }

    /// A part failed for good (or ran out of attempts).
    pub(super) async fn fail(
        &self,
        received: Received,
        plan: &Plan,
        reports: Vec<PartReport>,
        attempts: u32,
        failure: SendFailure,
    ) {
        let connector = plan.route.sink.connector();
        let (outcome, reason) = if failure.opted_out {
            (Outcome::OptedOut, "opted_out")
        } else if failure.retryable {
            (Outcome::DeadLettered, "retries_exhausted")
        } else {
            (Outcome::Failed, failure.reason)
        };
        self.count(connector, outcome, failure.error_code);
        tracing::warn!(
            correlation_id = %plan.correlation_id,
            connector,
            status = outcome.as_str(),
            reason,
            http_status = failure.http_status,
            error_code = failure.error_code,
            attempts,
            "egress event not sent; dead-lettering"
        );
        // The platform's text can quote the recipient: debug level only (and in the dead letter).
        tracing::debug!(correlation_id = %plan.correlation_id, detail = %failure.message, "send failure detail");
        let dead_letter = DeadLetter {
            connector: connector.to_owned(),
            reason: reason.to_owned(),
            detail: failure.message.clone(),
            error_code: failure.error_code,
            http_status: failure.http_status,
            attempts,
            correlation_id: Some(plan.correlation_id.to_string()),
            target: Some(plan.target.clone()),
            event_message_id: received.message_id.clone(),
            original_event: Parsed::value_of(&received.body),
        };
        let mut event =
            self.status_event(plan, &received, outcome, &reports, attempts, Some(reason));
        event.error_code = failure.error_code;
        event.http_status = failure.http_status;
        self.finish_terminal(received, &plan.key, dead_letter, event)
            .await;
    }

    /// The event cannot be acted on (unreadable, no sink for it, nothing to send, bad target).
    pub(super) async fn reject(&self, received: Received, parsed: Parsed, rejection: Rejection) {
        let correlation_id = parsed.field("/correlationId");
        let connector = self
            .route(parsed.field("/egress/connector").as_deref())
            .map_or(UNROUTED, |route| route.sink.connector());
        tracing::warn!(
            correlation_id = correlation_id.as_deref().unwrap_or("-"),
            connector,
            reason = rejection.reason,
            "egress event rejected; dead-lettering"
        );
        tracing::debug!(detail = %rejection.detail, "rejection detail");
        self.count(connector, Outcome::DeadLettered, None);
        let original_event = parsed
            .json
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&received.body).into_owned()));
        let key = received.key();
        let dead_letter = DeadLetter {
            connector: connector.to_owned(),
            reason: rejection.reason.to_owned(),
            detail: rejection.detail.clone(),
            error_code: None,
            http_status: None,
            attempts: 0,
            correlation_id: correlation_id.clone(),
            target: None,
            event_message_id: received.message_id.clone(),
            original_event,
        };
        let status = EgressStatusEvent {
            correlation_id,
            connector: connector.to_owned(),
            target: None,
            status: Outcome::DeadLettered,
            provider_sid: None,
            provider_sids: Vec::new(),
            error_code: None,
            http_status: None,
            reason: Some(rejection.reason.to_owned()),
            attempts: 0,
            parts: 0,
            parts_sent: 0,
            segments: 0,
            part_details: Vec::new(),
            event_message_id: received.message_id.clone(),
            at: Utc::now(),
        };
        self.finish_terminal(received, &key, dead_letter, status)
            .await;
    }

    /// Publishes the dead letter and status event, then acks; requeues when they could not be
    /// recorded anywhere (neither broker nor outbox).
    async fn finish_terminal(
        &self,
        received: Received,
        key: &str,
        dead_letter: DeadLetter,
        status: EgressStatusEvent,
    ) {
        let recorded = match self
            .publisher
            .publish(dead_letter_message(key, &dead_letter))
            .await
        {
            Ok(_) => self
                .publisher
                .publish(status_message(key, &status))
                .await
                .map(|_| ()),
            Err(error) => Err(error),
        };
        match recorded {
            Ok(()) => self.ack(&received, "dead_lettered"),
            Err(error) => {
                tracing::error!(%error, "dead letter not recorded; requeueing the event");
                tokio::time::sleep(REQUEUE_PAUSE).await;
                self.requeue(&received, "outcome not recorded");
            }
        }
    }

    fn status_event(
        &self,
        plan: &Plan,
        received: &Received,
        status: Outcome,
        reports: &[PartReport],
        attempts: u32,
        reason: Option<&str>,
    ) -> EgressStatusEvent {
        let provider_sids: Vec<String> = reports
            .iter()
            .filter_map(|r| r.provider_sid.clone())
            .collect();
        EgressStatusEvent {
            correlation_id: Some(plan.correlation_id.to_string()),
            connector: plan.route.sink.connector().to_owned(),
            target: Some(plan.target.clone()),
            status,
            provider_sid: provider_sids.first().cloned(),
            parts_sent: provider_sids.len(),
            provider_sids,
            error_code: None,
            http_status: None,
            reason: reason.map(str::to_owned),
            attempts,
            parts: plan.parts.len(),
            segments: plan.parts.iter().map(|p| p.info.segments).sum(),
            part_details: reports.to_vec(),
            event_message_id: received.message_id.clone(),
            at: Utc::now(),
        }
    }

    /// `egress_sends_total{connector, outcome, error_code}`.
    pub(super) fn count(&self, connector: &str, outcome: Outcome, error_code: Option<u32>) {
        let code = error_code.map(|c| c.to_string()).unwrap_or_default();
        self.metrics
            .egress_sends
            .with_label_values(&[connector, outcome.as_str(), code.as_str()])
            .inc();
    }

    fn ack(&self, received: &Received, result: &str) {
        self.metrics
            .egress_events
            .with_label_values(&[result])
            .inc();
        if let Err(error) = received.handle.ack() {
            // The broker will redeliver; the idempotency tokens make the resend harmless.
            tracing::warn!(%error, "ack failed; the event will be redelivered");
        }
    }

    pub(super) fn requeue(&self, received: &Received, why: &str) {
        self.metrics
            .egress_events
            .with_label_values(&["requeued"])
            .inc();
        tracing::info!(why, "requeueing egress event");
        if let Err(error) = received.handle.requeue() {
            tracing::warn!(%error, why, "egress event not requeued; the broker redelivers unacked events when the channel closes");
        }
    }
}
