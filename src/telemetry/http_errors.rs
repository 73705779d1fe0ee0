//! Requests the HTTP layer refuses itself (a garbage request line, a bad `Content-Length`,
//! headers over the limit: actix-http answers 400 or 431 before any of our code runs) are the
//! client's mistake, yet actix-http logs them at ERROR. [`DemotedHttpErrors`] re-logs each at
//! INFO under `ingress_egress::http`, and [`WithoutHttpLayerErrors`] keeps the originals out
//! of the log, so ERROR stays for what an operator must act on.

use std::fmt;

use tracing::{
    field::{Field, Visit},
    Event, Level, Metadata, Subscriber,
};
use tracing_log::NormalizeEvent;
use tracing_subscriber::{
    layer::{Context, Filter},
    Layer,
};

/// Where actix-http logs the requests it refuses.
const DISPATCHER: &str = "actix_http::h1::dispatcher";

/// actix-http logs through the `log` crate: its records arrive as events whose real target
/// is in their normalised metadata.
fn is_http_layer_error(event: &Event<'_>) -> bool {
    let normalized = event.normalized_metadata();
    let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
    metadata.target() == DISPATCHER && *metadata.level() == Level::ERROR
}

/// A per-layer filter for the log output: everything but actix-http's refusals.
pub struct WithoutHttpLayerErrors;

impl<S> Filter<S> for WithoutHttpLayerErrors {
    fn enabled(&self, _metadata: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        !is_http_layer_error(event)
    }
}

/// Re-logs actix-http's refusals at INFO.
pub struct DemotedHttpErrors;

impl<S: Subscriber> Layer<S> for DemotedHttpErrors {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !is_http_layer_error(event) {
            return;
        }
        let mut message = Message::default();
        event.record(&mut message);
        tracing::info!(
            target: "ingress_egress::http",
            error = %message.0,
            "request refused by the HTTP layer (malformed, or headers too large)"
        );
    }
}

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
