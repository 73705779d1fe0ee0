//! Every HTTP request is a span carrying its `request_id` (and, once a handler knows it, the
//! `correlation_id`), and ends with one line: method, path, status and duration.
//!
//! The line is never a warning: a client's mistake (a 404, a bad signature, a malformed body) is
//! not ours, and where the service is at fault (a 503 because the broker is away) the component
//! concerned logs its own warning or error with the reason. Refusals and failures are
//! information; successes are debug detail, so health probes do not fill the log.

use std::time::Instant;

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::StatusCode,
    Error, HttpMessage,
};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};

/// The root span of every request (use with `tracing_actix_web::TracingLogger<RequestLog>`).
pub struct RequestLog;

/// What the closing line repeats about the request, kept in its extensions.
#[derive(Clone)]
struct Arrived {
    at: Instant,
    method: String,
    path: String,
}

impl RootSpanBuilder for RequestLog {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(ToString::to_string)
            .unwrap_or_default();
        request.extensions_mut().insert(Arrived {
            at: Instant::now(),
            method: request.method().to_string(),
            path: request.path().to_owned(),
        });
        tracing::info_span!(
            "HTTP request",
            request_id = %request_id,
            correlation_id = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let (status, arrived) = match outcome {
            Ok(response) => (
                response.status(),
                response.request().extensions().get::<Arrived>().cloned(),
            ),
            Err(error) => (error.as_response_error().status_code(), None),
        };
        span.in_scope(|| log_line(status, arrived));
    }
}

/// The closing line of a request, at the level its status deserves.
fn log_line(status: StatusCode, arrived: Option<Arrived>) {
    let code = status.as_u16();
    let (method, path, ms) = match &arrived {
        Some(arrived) => (
            arrived.method.as_str(),
            arrived.path.as_str(),
            // Tenths of a millisecond are all a person reads.
            (arrived.at.elapsed().as_secs_f64() * 10_000.0).round() / 10.0,
        ),
        None => ("", "", 0.0),
    };
    if status.is_server_error() {
        tracing::info!(method, path, status = code, ms, "request failed");
    } else if status.is_client_error() {
        tracing::info!(method, path, status = code, ms, "request refused");
    } else {
        tracing::debug!(method, path, status = code, ms, "request served");
    }
}
