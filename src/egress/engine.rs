//! The egress engine: one consumed delivery from bytes to settlement.
//!
//! [`Engine::accept`] runs synchronously in the consumer loop, in delivery order: it parses the
//! event, finds the sink its `egress.connector` names, plans the parts and takes the recipient's
//! place in line ([`super::order`]). The returned future, spawned by the loop, then waits for
//! its turn and delivers the parts ([`super::deliver`]); the outcome is published and the
//! delivery settled in [`super::report`].
//!
//! Idempotency: each part's token is derived from the event's identity (its `message_id`, else
//! a SHA-256 of the body) and the part index, so every attempt and every redelivery of a part
//! carries the same token. The envelope `correlationId` alone is not used, since several
//! replies to one inbound message share it.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use chrono::Utc;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    ledger::SendLedger,
    order::Sequencer,
    rate::RateLimiter,
    select::{self, Parsed, Rejection},
    sink::{EgressSink, SinkPolicy, TextInfo},
};
use crate::{
    bus::delivery::Received,
    envelope::Media,
    metrics::Metrics,
    publisher::EventPublisher,
    state::RateSlots,
    telemetry::trace_context::{continue_trace, remote_parent},
};

/// Backoff between attempts of one part (the attempt count is the sink's), the most parts one
/// event may become, and where send slots come from.
#[derive(Clone)]
pub struct EngineConfig {
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// `EGRESS_MAX_PARTS`: longer texts are dead-lettered (`too_long`) rather than sent as
    /// dozens of billed messages.
    pub max_parts: usize,
    /// Send slots shared with other instances (Redis); `None` paces in this process only.
    pub rate_slots: Option<Arc<dyn RateSlots>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_millis(250),
            retry_max: Duration::from_secs(30),
            max_parts: 10,
            rate_slots: None,
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

/// The span of one consumed event: it continues the trace the event carries (its `traceparent`
/// header, else its envelope's `traceId`), so the reply's sends and outcome events join the
/// trace of the message it answers.
fn consume_span(
    received: &Received,
    work: &Result<(Plan, impl Sized), (Parsed, Rejection)>,
) -> tracing::Span {
    let (correlation_id, trace_id) = match work {
        Ok((plan, _)) => (Some(plan.correlation_id.to_string()), plan.trace_id.clone()),
        Err((parsed, _)) => (parsed.field("/correlationId"), parsed.field("/traceId")),
    };
    let span = tracing::info_span!(
        "egress.consume",
        otel.kind = "consumer",
        messaging.message.id = received.message_id.as_deref().unwrap_or_default(),
        correlation_id = correlation_id.as_deref().unwrap_or_default(),
    );
    if let Some(parent) = remote_parent(received.trace_parent.as_deref(), trace_id.as_deref()) {
        continue_trace(&span, parent);
    }
    span
}

/// A sink with its limits, as the engine drives it.
pub(super) struct SinkRoute {
    pub(super) sink: Arc<dyn EgressSink>,
    pub(super) policy: SinkPolicy,
    pub(super) limiter: RateLimiter,
}

/// What one event will send, decided before its turn comes.
pub(super) struct Plan {
    pub(super) key: String,
    pub(super) route: Arc<SinkRoute>,
    pub(super) correlation_id: Uuid,
    /// The envelope's `traceId`, the trace to continue when the delivery has no `traceparent`.
    pub(super) trace_id: Option<String>,
    pub(super) target: String,
    pub(super) sender_key: String,
    pub(super) metadata: Map<String, Value>,
    pub(super) parts: Vec<PlannedPart>,
}

pub(super) struct PlannedPart {
    pub(super) text: Option<String>,
    pub(super) info: TextInfo,
    pub(super) media: Vec<Media>,
    pub(super) token: String,
}

pub struct Engine {
    pub(super) routes: HashMap<&'static str, Arc<SinkRoute>>,
    /// Connector names in registration order, for messages.
    connectors: Vec<&'static str>,
    pub(super) publisher: EventPublisher,
    pub(super) ledger: SendLedger,
    pub(super) metrics: Metrics,
    pub(super) config: EngineConfig,
    sequencer: Arc<Sequencer>,
    pub(super) shutdown: CancellationToken,
}

impl Engine {
    pub fn new(
        sinks: Vec<Arc<dyn EgressSink>>,
        publisher: EventPublisher,
        ledger: SendLedger,
        metrics: Metrics,
        config: EngineConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let connectors: Vec<&'static str> = sinks.iter().map(|sink| sink.connector()).collect();
        let routes = sinks
            .into_iter()
            .map(|sink| {
                let policy = sink.policy();
                let limiter = RateLimiter::new(policy.max_send_rate, policy.burst);
                let route = SinkRoute {
                    limiter: match &config.rate_slots {
                        Some(slots) => limiter.shared(slots.clone(), sink.connector()),
                        None => limiter,
                    },
                    policy,
                    sink,
                };
                (route.sink.connector(), Arc::new(route))
            })
            .collect();
        Arc::new(Self {
            routes,
            connectors,
            publisher,
            ledger,
            metrics,
            config,
            sequencer: Sequencer::new(),
            shutdown,
        })
    }

    /// Takes a delivery in consumption order and returns the work to run (spawn it).
    pub fn accept(
        self: &Arc<Self>,
        received: Received,
    ) -> impl Future<Output = ()> + Send + 'static {
        let engine = self.clone();
        if let Some(at) = received.timestamp {
            let lag = (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
            self.metrics.egress_lag.observe(lag);
        }
        if received.redelivered {
            tracing::debug!(message_id = ?received.message_id, "redelivered egress event; resends reuse their idempotency tokens");
        }
        // Take the recipient's place in line now, synchronously, in consumption order.
        let work = self.plan(&received).map(|plan| {
            let turn = self.sequencer.enqueue(&plan.target);
            (plan, turn)
        });
        let span = consume_span(&received, &work);
        async move {
            match work {
                Ok((plan, turn)) => engine.deliver(received, plan, turn).await,
                Err((parsed, rejection)) => engine.reject(received, parsed, rejection).await,
            }
        }
        .instrument(span)
    }

    fn plan(&self, received: &Received) -> Result<Plan, (Parsed, Rejection)> {
        let (parsed, check) = select::parse(&received.body, &self.connectors);
        if let Err(rejection) = check {
            return Err((parsed, rejection));
        }
        let event = parsed.event.as_ref().expect("parse succeeded");
        let route = self.routes[event.egress.connector.as_str()].clone();
        let sink = route.sink.as_ref();
        let selection = match select::select(event, |target| sink.check_target(target)) {
            Ok(selection) => selection,
            Err(rejection) => return Err((parsed, rejection)),
        };
        let max_media = sink.max_media_per_part(&selection.target).max(1);
        let texts = selection
            .text
            .as_deref()
            .map(|text| sink.split_text(&selection.target, text))
            .unwrap_or_default();
        let mut media_chunks = selection.media.chunks(max_media).map(<[Media]>::to_vec);
        let mut first_media = media_chunks.next();
        let mut parts: Vec<(Option<String>, Vec<Media>)> = Vec::new();
        for (index, text) in texts.into_iter().enumerate() {
            // The first part carries the first media, unless together they are too long for
            // one message; then the media follow in a part of their own.
            let fits = first_media
                .as_ref()
                .is_some_and(|media| sink.fits(&selection.target, Some(&text), media));
            let media = if index == 0 && fits {
                first_media.take().unwrap_or_default()
            } else {
                Vec::new()
            };
            parts.push((Some(text), media));
        }
        parts.extend(
            first_media
                .into_iter()
                .chain(media_chunks)
                .map(|media| (None, media)),
        );

        if parts.len() > self.config.max_parts {
            let rejection = Rejection {
                reason: "too_long",
                detail: format!(
                    "the event would be sent as {} messages; at most {} (EGRESS_MAX_PARTS) are allowed",
                    parts.len(),
                    self.config.max_parts
                ),
            };
            return Err((parsed, rejection));
        }
        let key = received.key();
        let count = parts.len();
        let parts = parts
            .into_iter()
            .enumerate()
            .map(|(index, (text, media))| PlannedPart {
                info: sink.describe_text(text.as_deref().unwrap_or_default()),
                text,
                media,
                token: part_token(&key, index, count),
            })
            .collect();
        let sender_key = sink.sender_key(&selection.target, &event.egress.metadata);
        let correlation_id = event.correlation_id;
        let metadata = event.egress.metadata.clone();
        Ok(Plan {
            key,
            route,
            correlation_id,
            trace_id: event.trace_id.clone(),
            target: selection.target,
            sender_key,
            metadata,
            parts,
        })
    }

    /// The sink serving `connector`, if any.
    pub(super) fn route(&self, connector: Option<&str>) -> Option<&Arc<SinkRoute>> {
        connector.and_then(|name| self.routes.get(name))
    }
}
