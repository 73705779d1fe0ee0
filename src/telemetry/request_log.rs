//! The one line every HTTP request ends with: method, path, status and duration, written inside
//! the request's span (see [`super::request_span`]), so it carries the request id.
//!
//! The line is never a warning: a client's mistake (a 404, a bad signature, a malformed body) is
//! not ours, and where the service is at fault (a 503 because the broker is away) the component
//! concerned logs its own warning or error with the reason. Refusals and failures are
//! information; successes are debug detail, so health probes do not fill the log.

use std::time::Instant;

use actix_web::{dev::ServiceRequest, http::StatusCode, HttpMessage};

/// What the closing line repeats about the request, kept in its extensions.
#[derive(Clone)]
pub struct Arrived {
    at: Instant,
    method: String,
    path: String,
}

impl Arrived {
    /// Notes the request's arrival in its extensions.
    pub fn note(request: &ServiceRequest) {
        request.extensions_mut().insert(Arrived {
            at: Instant::now(),
            method: request.method().to_string(),
            path: request.path().to_owned(),
        });
    }
}

/// The closing line of a request, at the level its status deserves.
pub fn log_line(status: StatusCode, arrived: Option<&Arrived>) {
    let code = status.as_u16();
    let (method, path, ms) = match arrived {
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
