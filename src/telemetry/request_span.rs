//! The span of every HTTP request. A request that arrives with a `traceparent` (Cloud Run's
//! front end adds one; so may a proxy or a caller) continues that trace; any other starts one.
//! Everything a webhook publishes carries the request's trace onward. The request ends with one
//! line in its span ([`super::request_log`]).

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    Error, HttpMessage,
};
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};

use super::{
    request_log::{log_line, Arrived},
    trace_context::{continue_trace, from_traceparent, TRACEPARENT},
};

/// `tracing-actix-web`'s request span, joined to the caller's trace when it names one.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        Arrived::note(request);
        let span = tracing_actix_web::root_span!(
            level = tracing::Level::INFO,
            request,
            correlation_id = tracing::field::Empty
        );
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
        let (status, arrived) = match outcome {
            Ok(response) => (
                response.status(),
                response.request().extensions().get::<Arrived>().cloned(),
            ),
            Err(error) => (error.as_response_error().status_code(), None),
        };
        span.in_scope(|| log_line(status, arrived.as_ref()));
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}
