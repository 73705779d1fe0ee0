//! Sending one planned event, part after part: each part is rate limited per sender, retried
//! with backoff on retryable failures (honouring `Retry-After`) up to the sink's attempt limit,
//! and given up on a permanent failure. Shutdown requeues at every wait.

use std::sync::Arc;

use tracing::Instrument;

use super::{
    engine::{Engine, Plan},
    events::{Outcome, PartReport},
    order::Turn,
};
use crate::{backoff::Backoff, bus::delivery::Received, egress::sink::Outbound};

impl Engine {
    pub(super) async fn deliver(self: Arc<Self>, received: Received, plan: Plan, mut turn: Turn) {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return self.requeue(&received, "shutting down").await,
            _ = turn.wait() => {}
        }
        let route = plan.route.clone();
        let connector = route.sink.connector();
        let mut reports: Vec<PartReport> = Vec::new();
        let mut total_attempts = 0;
        for (index, part) in plan.parts.iter().enumerate() {
            let mut attempts = 0;
            let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_max);
            loop {
                let waited = self
                    .metrics
                    .egress_rate_limit_wait
                    .with_label_values(&[connector])
                    .start_timer();
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => return self.requeue(&received, "shutting down").await,
                    _ = route.limiter.acquire(&plan.sender_key) => {}
                }
                waited.observe_duration();
                attempts += 1;
                total_attempts += 1;
                let timer = self
                    .metrics
                    .egress_send_duration
                    .with_label_values(&[connector])
                    .start_timer();
                let send_span =
                    tracing::info_span!("egress.send", connector, part = index, attempt = attempts);
                let result = route
                    .sink
                    .send(Outbound {
                        correlation_id: plan.correlation_id,
                        target: &plan.target,
                        egress_metadata: &plan.metadata,
                        text: part.text.as_deref(),
                        media: &part.media,
                        part_index: index,
                        part_count: plan.parts.len(),
                        idempotency_token: &part.token,
                    })
                    .instrument(send_span)
                    .await;
                timer.observe_duration();
                match result {
                    Ok(accepted) => {
                        tracing::debug!(correlation_id = %plan.correlation_id, part = index, attempts, "part accepted");
                        reports.push(PartReport {
                            index,
                            text: part.info,
                            media: part.media.len(),
                            provider_sid: accepted.provider_sid,
                            attempts,
                        });
                        break;
                    }
                    Err(failure) if failure.retryable && attempts < route.policy.max_attempts => {
                        self.count(connector, Outcome::Retried, failure.error_code);
                        tracing::debug!(correlation_id = %plan.correlation_id, detail = %failure.message, "send failure detail");
                        let delay = backoff
                            .next_delay()
                            .max(failure.retry_after.unwrap_or_default());
                        tracing::warn!(
                            correlation_id = %plan.correlation_id,
                            connector,
                            part = index,
                            attempts,
                            http_status = failure.http_status,
                            error_code = failure.error_code,
                            delay_ms = delay.as_millis() as u64,
                            "send failed; retrying"
                        );
                        tokio::select! {
                            biased;
                            _ = self.shutdown.cancelled() => return self.requeue(&received, "shutting down").await,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                    Err(failure) => {
                        reports.push(PartReport {
                            index,
                            text: part.info,
                            media: part.media.len(),
                            provider_sid: None,
                            attempts,
                        });
                        return self
                            .fail(received, &plan, reports, total_attempts, failure)
                            .await;
                    }
                }
            }
        }
        drop(turn);
        self.sent(received, &plan, reports, total_attempts).await;
    }
}
