//! Requests the HTTP layer refuses itself (a garbage request line, a bad `Content-Length`,
//! headers over the limit: actix-http answers 400 or 431 before any of our code runs) are the
//! client's mistake, yet actix-http logs them at ERROR. [`demoted_http_errors`] re-logs each at
//! INFO under `ingress_egress::http`, and [`WithoutHttpLayerErrors`] keeps the originals out
//! of the log, so ERROR stays for what an operator must act on.

use std::fmt;

use tracing::{
    field::{Field, Visit},
    level_filters::LevelFilter,
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

/// The layer that re-logs actix-http's refusals at INFO, behind a filter of its own that lets
/// only errors reach it. The filter is part of the layer on purpose: without one a layer counts
/// as wanting every event, which lifts the process's maximum level to TRACE, and every `trace!`
/// and `debug!` in every crate (lapin, actix, hyper) is then built and handed to the subscriber,
/// whatever the log level, instead of stopping at one comparison.
pub fn demoted_http_errors<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    DemotedHttpErrors.with_filter(LevelFilter::ERROR)
}

/// Re-logs actix-http's refusals; only through [`demoted_http_errors`].
struct DemotedHttpErrors;

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

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Layered as `telemetry::init` layers the JSON log output, at `info`. (That a refusal is
    /// re-logged is tested on the binary, in `tests/api/hardening.rs`: an event logged from
    /// inside another reaches only a global subscriber, not a scoped test one.)
    #[test]
    fn the_demoting_layer_leaves_the_maximum_level_to_the_log_filter() {
        let subscriber = tracing_subscriber::registry()
            .with(super::super::trace_id_layer())
            .with(
                super::super::cloud_logging::json_layer(std::io::sink, None)
                    .with_filter(WithoutHttpLayerErrors)
                    .with_filter(super::super::filter("info")),
            )
            .with(demoted_http_errors());
        assert_eq!(
            subscriber.max_level_hint(),
            Some(LevelFilter::INFO),
            "debug and trace events of every crate stop at the level check"
        );
    }
}
