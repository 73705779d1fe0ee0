//! Trace context without span export: each traced span gets a trace id and a span id, and
//! nothing more.
//!
//! With no OTLP endpoint set nobody receives the service's spans, yet their trace must still
//! travel: the `traceparent` of every published message, the `traceId` of its envelope and the
//! ids on every log line. Building full OpenTelemetry spans for that (attributes, timestamps, a
//! context activated on every poll) cost about a sixth of a webhook's CPU (README
//! "Performance"); this layer costs two random numbers per span. With an endpoint set,
//! [`super::span_layer`] takes its place and spans are exported as well.

use std::cell::RefCell;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use tracing::{span, Subscriber};
use tracing_subscriber::{layer::Context, registry::LookupSpan, Layer, Registry};

/// The ids of one span, kept in its extensions.
#[derive(Clone, Copy)]
struct SpanIds {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
}

impl SpanIds {
    fn span_context(self) -> SpanContext {
        SpanContext::new(
            self.trace_id,
            self.span_id,
            self.flags,
            false,
            TraceState::default(),
        )
    }
}

thread_local! {
    /// The traced spans entered on this thread, innermost last. Kept here rather than looked up
    /// through the subscriber because a log line is written while the subscriber is busy with
    /// the event, when `tracing::Span::current()` answers "none".
    static ENTERED: RefCell<Vec<(span::Id, SpanIds)>> = const { RefCell::new(Vec::new()) };
}

/// Gives every span it sees ids: its parent's trace (or a new one at the root) and a span id
/// of its own.
pub struct TraceIdLayer;

impl<S> Layer<S> for TraceIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let parent = span
            .parent()
            .and_then(|parent| parent.extensions().get::<SpanIds>().copied());
        let ids = SpanIds {
            trace_id: parent.map_or_else(new_trace_id, |parent| parent.trace_id),
            span_id: new_span_id(),
            // A new trace is sampled, as the SDK's default sampler would have it.
            flags: parent.map_or(TraceFlags::SAMPLED, |parent| parent.flags),
        };
        span.extensions_mut().insert(ids);
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        let ids = ctx
            .span(id)
            .and_then(|span| span.extensions().get::<SpanIds>().copied());
        if let Some(ids) = ids {
            ENTERED.with_borrow_mut(|entered| entered.push((id.clone(), ids)));
        }
    }

    fn on_exit(&self, id: &span::Id, _: Context<'_, S>) {
        ENTERED.with_borrow_mut(|entered| {
            if let Some(at) = entered.iter().rposition(|(span, _)| span == id) {
                entered.remove(at);
            }
        });
    }
}

fn new_trace_id() -> TraceId {
    TraceId::from_bytes(rand::random::<u128>().max(1).to_be_bytes())
}

fn new_span_id() -> SpanId {
    SpanId::from_bytes(rand::random::<u64>().max(1).to_be_bytes())
}

/// The ids of the innermost traced span entered on this thread; `None` when [`TraceIdLayer`]
/// traces none.
pub(super) fn entered() -> Option<SpanContext> {
    ENTERED.with_borrow(|entered| entered.last().map(|(_, ids)| ids.span_context()))
}

/// Moves `span` into `parent`'s trace; `false` when [`TraceIdLayer`] does not trace it.
pub(super) fn continue_from(span: &tracing::Span, parent: &SpanContext) -> bool {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let span = registry.span(id)?;
        let mut extensions = span.extensions_mut();
        let ids = extensions.get_mut::<SpanIds>()?;
        ids.trace_id = parent.trace_id();
        ids.flags = parent.trace_flags();
        Some(())
    })
    .flatten()
    .is_some()
}
