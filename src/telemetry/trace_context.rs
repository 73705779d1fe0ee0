//! W3C trace context across process boundaries: the `traceparent` a published message carries
//! (AMQP header, and the trace id in the envelope's `traceId`), and the remote parent a
//! consumer or a request handler continues from.
//!
//! Everything here reads or writes the trace context of `tracing` spans, kept by whichever of
//! [`super::trace_ids`] (spans not exported) or [`super::span_layer`] (exported) traces them;
//! without a tracing subscriber that traces there is no trace to carry and every function
//! answers `None`.

use std::collections::HashMap;

use opentelemetry::{
    propagation::{Injector, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
    Context,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C Trace Context header (also the AMQP header name).
pub const TRACEPARENT: &str = "traceparent";

/// The ids of the current span, when it is traced (by [`super::trace_ids`] or by
/// [`super::span_layer`], which makes an entered span's context current). Safe to call while
/// an event is being logged.
pub fn current_span_context() -> Option<SpanContext> {
    super::trace_ids::entered().or_else(|| {
        let context = Context::current();
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then_some(span_context)
    })
}

/// The `traceparent` naming the current span, when it is traced.
pub fn current_traceparent() -> Option<String> {
    /// Keeps the one header the propagator writes (no map for it on every publish).
    struct Traceparent(Option<String>);
    impl Injector for Traceparent {
        fn set(&mut self, key: &str, value: String) {
            if key == TRACEPARENT {
                self.0 = Some(value);
            }
        }
    }
    let context = Context::new().with_remote_span_context(current_span_context()?);
    let mut traceparent = Traceparent(None);
    TraceContextPropagator::new().inject_context(&context, &mut traceparent);
    traceparent.0
}

/// The trace id (32 lower-case hex digits) of the current span, when it is traced.
pub fn current_trace_id() -> Option<String> {
    current_span_context().map(|span_context| span_context.trace_id().to_string())
}

/// The remote span a `traceparent` value names; `None` when it is malformed.
pub fn from_traceparent(value: &str) -> Option<Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), value.trim().to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let valid = context.span().span_context().is_valid();
    valid.then_some(context)
}

/// A remote parent in the trace `trace_id` (32 hex digits, as in an envelope's `traceId`).
///
/// A bare trace id names no span, so a fresh span id stands in for the sender's: what
/// continues from it joins the trace, under a parent the trace does not show.
pub fn from_trace_id(trace_id: &str) -> Option<Context> {
    let trace_id = trace_id.trim();
    if trace_id.len() != 32 || !trace_id.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    if trace_id == TraceId::INVALID {
        return None;
    }
    let span_id = SpanId::from_bytes(rand::random::<u64>().max(1).to_be_bytes());
    let parent = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    Some(Context::new().with_remote_span_context(parent))
}

/// The parent of work done for a received message: its `traceparent`, else its `traceId`.
pub fn remote_parent(traceparent: Option<&str>, trace_id: Option<&str>) -> Option<Context> {
    traceparent
        .and_then(from_traceparent)
        .or_else(|| trace_id.and_then(from_trace_id))
}

/// Makes `span` continue `parent`'s trace. Call it before the span is first entered.
pub fn continue_trace(span: &tracing::Span, parent: Context) {
    if super::trace_ids::continue_from(span, parent.span().span_context()) {
        return;
    }
    // Fails only once the span has started, which callers rule out, or without a tracing
    // subscriber, where there is no trace to continue.
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Runs `body` under each way the service traces: ids only, and OpenTelemetry spans.
    fn traced(body: impl Fn()) {
        let ids_only = tracing_subscriber::registry().with(crate::telemetry::trace_id_layer());
        tracing::subscriber::with_default(ids_only, &body);
        let provider = SdkTracerProvider::builder().build();
        let exported = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(exported, &body);
    }

    #[test]
    fn a_new_span_starts_a_sampled_trace_that_its_children_share() {
        traced(|| {
            let request = tracing::info_span!("request");
            let _request = request.enter();
            let outer = current_span_context().expect("traced");
            assert!(outer.is_valid() && outer.is_sampled());
            let traceparent = current_traceparent().unwrap();
            assert_eq!(
                traceparent,
                format!("00-{}-{}-01", outer.trace_id(), outer.span_id())
            );
            let publish = tracing::info_span!("publish");
            let _publish = publish.enter();
            let inner = current_span_context().unwrap();
            assert_eq!(inner.trace_id(), outer.trace_id());
            assert_ne!(inner.span_id(), outer.span_id());
        });
    }

    #[test]
    fn a_parent_not_sampled_stays_not_sampled() {
        traced(|| {
            let span = tracing::info_span!("consume");
            continue_trace(
                &span,
                from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                    .unwrap(),
            );
            let _entered = span.enter();
            assert!(current_traceparent()
                .unwrap()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
            assert!(current_traceparent().unwrap().ends_with("-00"));
        });
    }

    #[test]
    fn two_requests_are_two_traces() {
        traced(|| {
            let first = tracing::info_span!("request").in_scope(current_trace_id);
            let second = tracing::info_span!("request").in_scope(current_trace_id);
            assert_ne!(first.unwrap(), second.unwrap());
        });
    }

    #[test]
    fn a_span_continuing_a_traceparent_is_in_its_trace() {
        traced(|| {
            let span = tracing::info_span!("consume");
            continue_trace(&span, from_traceparent(PARENT).unwrap());
            let _entered = span.enter();
            assert_eq!(
                current_trace_id().as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
            let traceparent = current_traceparent().unwrap();
            assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
            assert!(
                !traceparent.contains("00f067aa0ba902b7"),
                "names this span, not its parent"
            );
        });
    }

    #[test]
    fn a_bare_trace_id_is_continued_too() {
        traced(|| {
            let span = tracing::info_span!("consume");
            let parent = remote_parent(None, Some("4bf92f3577b34da6a3ce929d0e0e4736")).unwrap();
            continue_trace(&span, parent);
            let _entered = span.enter();
            assert_eq!(
                current_trace_id().as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
        });
    }

    #[test]
    fn malformed_values_name_no_parent() {
        for bad in [
            "",
            "00-zz-00f067aa0ba902b7-01",
            "4bf92f35",
            "not a traceparent",
        ] {
            assert!(from_traceparent(bad).is_none(), "{bad}");
        }
        assert!(from_trace_id("00000000000000000000000000000000").is_none());
        assert!(from_trace_id("4bf92f3577b34da6a3ce929d0e0e473g").is_none());
        assert!(remote_parent(Some("garbage"), None).is_none());
        assert!(remote_parent(Some("garbage"), Some("4bf92f3577b34da6a3ce929d0e0e4736")).is_some());
    }

    #[test]
    fn without_a_tracing_subscriber_there_is_nothing_to_carry() {
        let span = tracing::info_span!("untraced");
        let _entered = span.enter();
        assert_eq!(current_traceparent(), None);
        assert_eq!(current_trace_id(), None);
    }
}
