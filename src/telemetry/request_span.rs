//! The span of every HTTP request. A request that arrives with a `traceparent` (Cloud Run's
//! front end adds one; so may a proxy or a caller) continues that trace; any other starts one.
//! Everything a webhook publishes carries the request's trace onward.

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    Error,
};
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};

use super::trace_context::{continue_trace, from_traceparent, TRACEPARENT};

/// `tracing-actix-web`'s request span, joined to the caller's trace when it names one.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let span = tracing_actix_web::root_span!(level = tracing::Level::INFO, request);
        let parent = request
            .headers()
            .get(TRACEPARENT)
            .and_then(|value| value.to_str().ok())
            .and_then(from_traceparent);
        if let Some(parent) = parent {
            continue_trace(&span, parent);
        }
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}
