//! Sending one planned event, part after part, each at most once in effect: a part the send
//! ledger knows as sent is not sent again; one with an attempt of unknown outcome is first
//! looked for at the platform; otherwise its intent is recorded, it is sent (rate limited per
//! sender), and the answer recorded. Retryable failures are retried with backoff (honouring
//! `Retry-After`) up to the sink's attempt limit; a permanent failure ends the event. Shutdown
//! requeues at every wait.
//!
//! When the state store (the ledger, the shared rate) cannot answer, sending pauses until it
//! does: sending without the ledger could repeat a message, and requeueing would let the
//! recipient's next event overtake this one. The event keeps its place in line meanwhile.

use std::{future::Future, sync::Arc, time::Duration};

use chrono::Utc;
use tracing::Instrument;

use super::{
    engine::{Engine, Plan, PlannedPart},
    events::{Outcome, PartReport},
    ledger::PartRecord,
    order::Turn,
    sink::{Outbound, Resolution, SendFailure},
};
use crate::{backoff::Backoff, bus::delivery::Received, state::StoreError};

/// How one part ended.
enum PartEnd {
    Accepted(PartReport),
    Failed(PartReport, SendFailure),
    /// Stop here and requeue the event (shutdown, or the ledger cannot be read or written).
    Requeue(&'static str),
}

impl Engine {
    pub(super) async fn deliver(self: Arc<Self>, received: Received, plan: Plan, mut turn: Turn) {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return self.requeue(&received, "shutting down"),
            _ = turn.wait() => {}
        }
        let mut reports: Vec<PartReport> = Vec::new();
        let mut total_attempts = 0;
        for (index, part) in plan.parts.iter().enumerate() {
            match self.deliver_part(&plan, index, part).await {
                PartEnd::Accepted(report) => {
                    total_attempts += report.attempts;
                    reports.push(report);
                }
                PartEnd::Failed(report, failure) => {
                    total_attempts += report.attempts;
                    reports.push(report);
                    return self
                        .fail(received, &plan, reports, total_attempts, failure)
                        .await;
                }
                PartEnd::Requeue(why) => {
                    if why != "shutting down" {
                        tokio::time::sleep(super::report::REQUEUE_PAUSE).await;
                    }
                    return self.requeue(&received, why);
                }
            }
        }
        drop(turn);
        self.sent(received, &plan, reports, total_attempts).await;
    }

    async fn deliver_part(&self, plan: &Plan, index: usize, part: &PlannedPart) -> PartEnd {
        let route = plan.route.clone();
        let connector = route.sink.connector();
        let outbound = Outbound {
            correlation_id: plan.correlation_id,
            target: &plan.target,
            egress_metadata: &plan.metadata,
            text: part.text.as_deref(),
            media: &part.media,
            part_index: index,
            part_count: plan.parts.len(),
            idempotency_token: &part.token,
        };
        let report =
            |provider_sid: Option<String>, attempts: u32, resolved_by: Option<&str>| PartReport {
                index,
                text: part.info,
                media: part.media.len(),
                provider_sid,
                attempts,
                resolved_by: resolved_by.map(str::to_owned),
            };
        let mut unresolved_since = match self
            .until_answered("send ledger", || self.ledger.get(&part.token))
            .await
        {
            Ok(Some(PartRecord::Sent {
                provider_sid,
                resolved_by,
            })) => {
                tracing::info!(correlation_id = %plan.correlation_id, part = index, "part already sent; not sending it again");
                let how = resolved_by.map_or("ledger".to_owned(), |how| format!("ledger:{how}"));
                return PartEnd::Accepted(report(Some(provider_sid), 0, Some(&how)));
            }
            Ok(Some(PartRecord::Pending { since })) => Some(since),
            Ok(None) => None,
            Err(gave_up) => return PartEnd::Requeue(gave_up.reason()),
        };
        let mut attempts = 0;
        let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_max);
        loop {
            attempts += 1;
            let result = match unresolved_since {
                Some(since) => match route.sink.resolve(outbound, since).await {
                    Ok(Resolution::Found { provider_sid, how }) => {
                        tracing::info!(correlation_id = %plan.correlation_id, part = index, how, "an earlier attempt had created the part; not sending it again");
                        if let Err(error) = self
                            .ledger
                            .sent(&part.token, &provider_sid, Some(how))
                            .await
                        {
                            tracing::warn!(%error, "resolved part not recorded in the send ledger");
                        }
                        return PartEnd::Accepted(report(Some(provider_sid), attempts, Some(how)));
                    }
                    Ok(Resolution::NotFound) => {
                        tracing::info!(correlation_id = %plan.correlation_id, part = index, "no trace of the earlier attempt; sending again");
                        unresolved_since = None;
                        self.send_once(plan, outbound, &part.token, attempts).await
                    }
                    // Not knowing is no licence to send: the lookup is retried like a send.
                    Err(failure) => Err(SendOnce::Failed(failure)),
                },
                None => self.send_once(plan, outbound, &part.token, attempts).await,
            };
            let failure = match result {
                Ok(provider_sid) => {
                    tracing::debug!(correlation_id = %plan.correlation_id, part = index, attempts, "part accepted");
                    return PartEnd::Accepted(report(provider_sid, attempts, None));
                }
                Err(SendOnce::Requeue(why)) => return PartEnd::Requeue(why),
                Err(SendOnce::Ambiguous(failure)) => {
                    unresolved_since = match self.ledger.get(&part.token).await {
                        Ok(Some(PartRecord::Pending { since })) => Some(since),
                        _ => Some(Utc::now()),
                    };
                    failure
                }
                Err(SendOnce::Failed(failure)) => failure,
            };
            if !(failure.retryable && attempts < route.policy.max_attempts) {
                return PartEnd::Failed(report(None, attempts, None), failure);
            }
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
                ambiguous = failure.ambiguous,
                delay_ms = delay.as_millis() as u64,
                "send failed; retrying"
            );
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return PartEnd::Requeue("shutting down"),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One rate-limited send with its intent and outcome recorded in the ledger.
    async fn send_once(
        &self,
        plan: &Plan,
        outbound: Outbound<'_>,
        part_key: &str,
        attempt: u32,
    ) -> Result<Option<String>, SendOnce> {
        let route = &plan.route;
        let connector = route.sink.connector();
        let waited = self
            .metrics
            .egress_rate_limit_wait
            .with_label_values(&[connector])
            .start_timer();
        let paced = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Err(SendOnce::Requeue("shutting down")),
            paced = self.until_answered("rate limit", || route.limiter.acquire(&plan.sender_key)) => paced,
        };
        if let Err(gave_up) = paced {
            return Err(SendOnce::Requeue(gave_up.reason()));
        }
        waited.observe_duration();
        if let Err(gave_up) = self
            .until_answered("send ledger", || self.ledger.pending(part_key, Utc::now()))
            .await
        {
            return Err(SendOnce::Requeue(gave_up.reason()));
        }
        let timer = self
            .metrics
            .egress_send_duration
            .with_label_values(&[connector])
            .start_timer();
        let span = tracing::info_span!(
            "egress.send",
            connector,
            part = outbound.part_index,
            attempt
        );
        let result = route.sink.send(outbound).instrument(span).await;
        timer.observe_duration();
        // A failure to record after the platform answered is not a reason to send again: the
        // pending record makes the next attempt look first.
        match result {
            Ok(accepted) => {
                let recorded = match &accepted.provider_sid {
                    Some(sid) => self.ledger.sent(part_key, sid, None).await,
                    None => Ok(()),
                };
                if let Err(error) = recorded {
                    tracing::warn!(%error, "sent part not recorded in the send ledger");
                }
                Ok(accepted.provider_sid)
            }
            Err(failure) if failure.ambiguous => Err(SendOnce::Ambiguous(failure)),
            Err(failure) => {
                if let Err(error) = self.ledger.clear(part_key).await {
                    tracing::warn!(%error, "refused part not cleared from the send ledger");
                }
                Err(SendOnce::Failed(failure))
            }
        }
    }
}

impl Engine {
    /// Runs `operation` until the state store answers, pausing in between. Gives up on an
    /// unreadable entry and on shutdown.
    async fn until_answered<T, F, Fut>(
        &self,
        what: &'static str,
        mut operation: F,
    ) -> Result<T, GaveUp>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut paused = false;
        loop {
            let error = match operation().await {
                Ok(value) => {
                    if paused {
                        tracing::info!(what, "state store answers again; sending resumes");
                    }
                    return Ok(value);
                }
                Err(error @ StoreError::Corrupt(_)) => return Err(GaveUp::Unreadable(error)),
                Err(error) => error,
            };
            if !paused {
                tracing::error!(%error, what, "state store unavailable; sending pauses rather than risk a duplicate");
                paused = true;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(GaveUp::ShuttingDown),
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

/// Why [`Engine::until_answered`] stopped waiting for the state store.
enum GaveUp {
    ShuttingDown,
    Unreadable(StoreError),
}

impl GaveUp {
    /// The reason the event is requeued for.
    fn reason(self) -> &'static str {
        match self {
            GaveUp::ShuttingDown => "shutting down",
            GaveUp::Unreadable(error) => {
                tracing::error!(%error, "send ledger unreadable; requeueing rather than risk a duplicate");
                "send ledger unreadable"
            }
        }
    }
}

enum SendOnce {
    /// Refused: nothing was created.
    Failed(SendFailure),
    /// Maybe created: look before the next attempt.
    Ambiguous(SendFailure),
    Requeue(&'static str),
}
