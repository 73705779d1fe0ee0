//! The egress engine: one consumed delivery from bytes to ack.
//!
//! [`Engine::accept`] runs synchronously in the consumer loop, in delivery order: it parses the
//! event, plans the parts and takes the recipient's place in line ([`super::order`]). The
//! returned future, spawned by the loop, then waits for its turn, sends each part through the
//! sink (rate limited per sender, retried with backoff on retryable failures, honouring
//! `Retry-After`, bounded by `max_attempts`), publishes the outcome and only then acks.
//!
//! Idempotency: each part's token is derived from the event's identity (its AMQP `message_id`,
//! else a SHA-256 of the body) and the part index, so every attempt and every redelivery of a
//! part carries the same token and the platform creates the message at most once. The envelope
//! `correlationId` alone is not used, since several replies to one inbound message share it.

use std::{future::Future, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use lapin::options::{BasicAckOptions, BasicNackOptions};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    events::{dead_letter_message, status_message, DeadLetter, PartReport, Status, StatusEvent},
    order::{Sequencer, Turn},
    rate::RateLimiter,
    select::{self, Parsed, Rejection},
    sink::{EgressSink, Outbound, Outcome, SendFailure},
    split::{self, TextInfo},
};
use crate::{backoff::Backoff, envelope::Media, metrics::Metrics, publisher::EventPublisher};

/// Pause before requeueing an event whose outcome could not be recorded, so a broken outbox
/// does not turn into a hot loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Attempts per part, including the first (`TWILIO_MAX_SEND_ATTEMPTS`).
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Sends per second per sender (`TWILIO_MAX_SEND_RATE`).
    pub max_send_rate: f64,
    /// Sends a sender may make back to back before the rate applies.
    pub burst: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            retry_base: Duration::from_millis(250),
            retry_max: Duration::from_secs(30),
            max_send_rate: 1.0,
            burst: 1,
        }
    }
}

/// How a delivery is acknowledged.
pub enum Acker {
    /// A RabbitMQ delivery (manual ack).
    Amqp(lapin::Acker),
    /// The embedded bus has no acknowledgements.
    None,
}

/// A consumed egress event.
pub struct Incoming {
    pub body: Vec<u8>,
    /// AMQP `message_id` (or the embedded bus's), when set.
    pub message_id: Option<String>,
    pub timestamp: Option<DateTime<Utc>>,
    pub redelivered: bool,
    pub acker: Acker,
}

impl Incoming {
    /// Identifies the event across redeliveries: its `message_id`, else a hash of its body.
    pub fn key(&self) -> String {
        match self.message_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => format!("mid:{id}"),
            _ => {
                let digest = Sha256::digest(&self.body);
                format!("sha256:{}", hex::encode(&digest[..16]))
            }
        }
    }
}

/// The idempotency token of part `index` of `count` of the event identified by `event_key`.
pub fn part_token(event_key: &str, index: usize, count: usize) -> String {
    const NAMESPACE: Uuid = Uuid::from_u128(0x8d0c_1f55_2b7e_4c1a_9e3d_77a2_0c6b_f104);
    Uuid::new_v5(
        &NAMESPACE,
        format!("egress|{event_key}|{index}|{count}").as_bytes(),
    )
    .to_string()
}

struct Plan {
    key: String,
    correlation_id: Uuid,
    target: String,
    sender_key: String,
    metadata: Map<String, Value>,
    parts: Vec<PlannedPart>,
    original: Value,
}

struct PlannedPart {
    text: Option<String>,
    info: TextInfo,
    media: Vec<Media>,
    token: String,
}

pub struct Engine<S: EgressSink> {
    sink: Arc<S>,
    publisher: EventPublisher,
    metrics: Metrics,
    config: EngineConfig,
    limiter: RateLimiter,
    sequencer: Arc<Sequencer>,
    shutdown: CancellationToken,
}

impl<S: EgressSink> Engine<S> {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn new(
        sink: Arc<S>,
        publisher: EventPublisher,
        metrics: Metrics,
        config: EngineConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            limiter: RateLimiter::new(config.max_send_rate, config.burst),
            sink,
            publisher,
            metrics,
            config,
            sequencer: Sequencer::new(),
            shutdown,
        })
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Takes a delivery in consumption order and returns the work to run (spawn it).
    pub fn accept(
        self: &Arc<Self>,
        incoming: Incoming,
    ) -> impl Future<Output = ()> + Send + 'static {
        let engine = self.clone();
        if let Some(at) = incoming.timestamp {
            let lag = (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
            self.metrics.egress_lag.observe(lag);
        }
        if incoming.redelivered {
            tracing::debug!(message_id = ?incoming.message_id, "redelivered egress event; resends reuse their idempotency tokens");
        }
        // Take the recipient's place in line now, synchronously, in consumption order.
        let work = self.plan(&incoming).map(|plan| {
            let turn = self.sequencer.enqueue(&plan.target);
            (plan, turn)
        });
        async move {
            match work {
                Ok((plan, turn)) => engine.deliver(incoming, plan, turn).await,
                Err((parsed, rejection)) => engine.reject(incoming, parsed, rejection).await,
            }
        }
    }

    fn plan(&self, incoming: &Incoming) -> Result<Plan, (Parsed, Rejection)> {
        let (parsed, check) = select::parse(&incoming.body, self.sink.connector());
        if let Err(rejection) = check {
            return Err((parsed, rejection));
        }
        let event = parsed.event.as_ref().expect("parse succeeded");
        let selection = match select::select(event, |target| self.sink.check_target(target)) {
            Ok(selection) => selection,
            Err(rejection) => return Err((parsed, rejection)),
        };
        let max_units = self.sink.max_text_units(&selection.target);
        let max_media = self.sink.max_media_per_part(&selection.target).max(1);
        let texts = selection
            .text
            .as_deref()
            .map(|text| split::split(text, max_units))
            .unwrap_or_default();
        let mut media_chunks = selection.media.chunks(max_media).map(<[Media]>::to_vec);
        let mut parts: Vec<(Option<String>, Vec<Media>)> = Vec::new();
        for (index, text) in texts.into_iter().enumerate() {
            let media = if index == 0 {
                media_chunks.next().unwrap_or_default()
            } else {
                Vec::new()
            };
            parts.push((Some(text), media));
        }
        parts.extend(media_chunks.map(|media| (None, media)));

        let key = incoming.key();
        let count = parts.len();
        let parts = parts
            .into_iter()
            .enumerate()
            .map(|(index, (text, media))| PlannedPart {
                info: split::analyze(text.as_deref().unwrap_or_default()),
                text,
                media,
                token: part_token(&key, index, count),
            })
            .collect();
        let sender_key = self
            .sink
            .sender_key(&selection.target, &event.egress.metadata);
        Ok(Plan {
            key,
            correlation_id: event.correlation_id,
            target: selection.target,
            sender_key,
            metadata: event.egress.metadata.clone(),
            parts,
            original: parsed.json.clone().unwrap_or(Value::Null),
        })
    }

    async fn deliver(self: Arc<Self>, incoming: Incoming, plan: Plan, mut turn: Turn) {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return self.requeue(&incoming, "shutting down").await,
            _ = turn.wait() => {}
        }
        let mut reports: Vec<PartReport> = Vec::new();
        let mut total_attempts = 0;
        for (index, part) in plan.parts.iter().enumerate() {
            let mut attempts = 0;
            let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_max);
            loop {
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => return self.requeue(&incoming, "shutting down").await,
                    _ = self.limiter.acquire(&plan.sender_key) => {}
                }
                attempts += 1;
                total_attempts += 1;
                let result = self
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
                    .await;
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
                    Err(failure) if failure.retryable && attempts < self.config.max_attempts => {
                        self.sink.observe(Outcome::Retried, failure.error_code);
                        tracing::debug!(correlation_id = %plan.correlation_id, detail = %failure.message, "send failure detail");
                        let delay = backoff
                            .next_delay()
                            .max(failure.retry_after.unwrap_or_default());
                        tracing::warn!(
                            correlation_id = %plan.correlation_id,
                            part = index,
                            attempts,
                            http_status = failure.http_status,
                            error_code = failure.error_code,
                            delay_ms = delay.as_millis() as u64,
                            "send failed; retrying"
                        );
                        tokio::select! {
                            biased;
                            _ = self.shutdown.cancelled() => return self.requeue(&incoming, "shutting down").await,
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
                            .fail(incoming, &plan, reports, total_attempts, failure)
                            .await;
                    }
                }
            }
        }
        drop(turn);
        self.sink.observe(Outcome::Sent, None);
        let status = self.status_event(
            &plan,
            &incoming,
            Status::Sent,
            &reports,
            total_attempts,
            None,
        );
        if let Err(error) = self
            .publisher
            .publish(status_message(&plan.key, &status))
            .await
        {
            // The platform accepted the message: acking is right; only the report is lost.
            tracing::error!(correlation_id = %plan.correlation_id, %error, "sent, but the status event could not be published");
        }
        tracing::info!(correlation_id = %plan.correlation_id, parts = reports.len(), attempts = total_attempts, "egress event sent");
        self.ack(&incoming, "acked").await;
    }

    async fn fail(
        &self,
        incoming: Incoming,
        plan: &Plan,
        reports: Vec<PartReport>,
        attempts: u32,
        failure: SendFailure,
    ) {
        let (status, outcome, reason) = if failure.opted_out {
            (Status::OptedOut, Outcome::OptedOut, "opted_out")
        } else if failure.retryable {
            (
                Status::DeadLettered,
                Outcome::DeadLettered,
                "retries_exhausted",
            )
        } else {
            (Status::Failed, Outcome::Failed, failure.reason)
        };
        self.sink.observe(outcome, failure.error_code);
        tracing::warn!(
            correlation_id = %plan.correlation_id,
            status = status.as_str(),
            reason,
            http_status = failure.http_status,
            error_code = failure.error_code,
            attempts,
            "egress event not sent; dead-lettering"
        );
        // The platform's text can quote the recipient: debug level only (and in the dead letter).
        tracing::debug!(correlation_id = %plan.correlation_id, detail = %failure.message, "send failure detail");
        let dead_letter = DeadLetter {
            connector: self.sink.connector().to_owned(),
            reason: reason.to_owned(),
            detail: failure.message.clone(),
            error_code: failure.error_code,
            http_status: failure.http_status,
            attempts,
            correlation_id: Some(plan.correlation_id.to_string()),
            target: Some(plan.target.clone()),
            event_message_id: incoming.message_id.clone(),
            original_event: plan.original.clone(),
        };
        let mut event =
            self.status_event(plan, &incoming, status, &reports, attempts, Some(reason));
        event.error_code = failure.error_code;
        event.http_status = failure.http_status;
        self.finish_terminal(incoming, &plan.key, dead_letter, Some(event))
            .await;
    }

    async fn reject(&self, incoming: Incoming, parsed: Parsed, rejection: Rejection) {
        let correlation_id = parsed
            .json
            .as_ref()
            .and_then(|json| json.get("correlationId"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        tracing::warn!(
            correlation_id = correlation_id.as_deref().unwrap_or("-"),
            reason = rejection.reason,
            "egress event rejected; dead-lettering"
        );
        tracing::debug!(detail = %rejection.detail, "rejection detail");
        self.sink.observe(Outcome::DeadLettered, None);
        let original_event = parsed
            .json
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&incoming.body).into_owned()));
        let key = incoming.key();
        let dead_letter = DeadLetter {
            connector: self.sink.connector().to_owned(),
            reason: rejection.reason.to_owned(),
            detail: rejection.detail.clone(),
            error_code: None,
            http_status: None,
            attempts: 0,
            correlation_id: correlation_id.clone(),
            target: None,
            event_message_id: incoming.message_id.clone(),
            original_event,
        };
        let status = StatusEvent {
            correlation_id,
            connector: self.sink.connector().to_owned(),
            target: None,
            status: Status::DeadLettered,
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
            event_message_id: incoming.message_id.clone(),
            at: Utc::now(),
        };
        self.finish_terminal(incoming, &key, dead_letter, Some(status))
            .await;
    }

    /// Publishes the dead letter and status event, then acks; requeues when they could not be
    /// recorded anywhere (neither broker nor outbox).
    async fn finish_terminal(
        &self,
        incoming: Incoming,
        key: &str,
        dead_letter: DeadLetter,
        status: Option<StatusEvent>,
    ) {
        let recorded = match self
            .publisher
            .publish(dead_letter_message(key, &dead_letter))
            .await
        {
            Ok(_) => match status {
                Some(status) => self
                    .publisher
                    .publish(status_message(key, &status))
                    .await
                    .map(|_| ()),
                None => Ok(()),
            },
            Err(error) => Err(error),
        };
        match recorded {
            Ok(()) => self.ack(&incoming, "dead_lettered").await,
            Err(error) => {
                tracing::error!(%error, "dead letter not recorded; requeueing the event");
                tokio::time::sleep(REQUEUE_PAUSE).await;
                self.requeue(&incoming, "outcome not recorded").await;
            }
        }
    }

    fn status_event(
        &self,
        plan: &Plan,
        incoming: &Incoming,
        status: Status,
        reports: &[PartReport],
        attempts: u32,
        reason: Option<&str>,
    ) -> StatusEvent {
        let provider_sids: Vec<String> = reports
            .iter()
            .filter_map(|r| r.provider_sid.clone())
            .collect();
        StatusEvent {
            correlation_id: Some(plan.correlation_id.to_string()),
            connector: self.sink.connector().to_owned(),
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
            event_message_id: incoming.message_id.clone(),
            at: Utc::now(),
        }
    }

    async fn ack(&self, incoming: &Incoming, result: &str) {
        self.metrics
            .egress_events
            .with_label_values(&[result])
            .inc();
        if let Acker::Amqp(acker) = &incoming.acker {
            if let Err(error) = acker.ack(BasicAckOptions::default()).await {
                // The broker will redeliver; the idempotency tokens make the resend harmless.
                tracing::warn!(%error, "ack failed; the event will be redelivered");
            }
        }
    }

    async fn requeue(&self, incoming: &Incoming, why: &str) {
        self.metrics
            .egress_events
            .with_label_values(&["requeued"])
            .inc();
        match &incoming.acker {
            Acker::Amqp(acker) => {
                tracing::info!(why, "requeueing egress event");
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                if let Err(error) = acker.nack(requeue).await {
                    tracing::warn!(%error, "nack failed; the broker requeues unacked events when the channel closes");
                }
            }
            Acker::None => {
                tracing::warn!(why, "embedded bus cannot requeue; egress event dropped");
            }
        }
    }
}
