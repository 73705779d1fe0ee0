//! Egress: RabbitMQ → platform. Consumes `internal.egress.v1` events and delivers them through a
//! connector's [`sink::EgressSink`] (Twilio's lives in `connectors::twilio::egress_sink`),
//! effectively once: deterministic idempotency tokens, ack only after the platform accepted the
//! send or a terminal outcome was published.
//!
//! Module map:
//! - [`consumer`]: the loops that read deliveries (RabbitMQ queue with manual acks, or the
//!   embedded bus) and hand them to the engine; reconnects and shutdown.
//! - [`process`]: the engine: one delivery from bytes to ack (parse, plan, order, rate limit,
//!   send with retries, publish the outcome).
//! - [`select`]: which text, media and target an `InternalEventV2` asks us to send (DESIGN §3.2).
//! - [`split`]: long text into ordered parts at sentence/word boundaries; GSM-7/UCS-2 segments.
//! - [`rate`]: per-sender token bucket (`TWILIO_MAX_SEND_RATE`).
//! - [`order`]: per-recipient sequencing (same recipient in order, others concurrent).
//! - [`events`]: status (`internal.egress.status.v1`) and dead-letter (`internal.deadletter.v1`)
//!   event bodies.
//! - [`sink`]: the connector-neutral sink trait and its request/response types.

pub mod consumer;
#[cfg(test)]
mod engine_tests;
pub mod events;
pub mod order;
pub mod process;
pub mod rate;
pub mod select;
pub mod sink;
pub mod split;

pub use consumer::run;
pub use process::{Engine, EngineConfig};
pub use sink::EgressSink;

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    bus::Bus, configuration::BusSettings, metrics::Metrics, publisher::EventPublisher,
    readiness::ReadyFlag,
};

/// Starts the egress consumer for `sink` in the background. The flag is up while it consumes;
/// the task ends after `shutdown` once in-flight sends finished or were requeued.
pub fn start<S: EgressSink>(
    sink: S,
    config: EngineConfig,
    bus: Bus,
    bus_settings: BusSettings,
    publisher: EventPublisher,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> (ReadyFlag, JoinHandle<()>) {
    let ready = ReadyFlag::default();
    let engine = Engine::new(Arc::new(sink), publisher, metrics, config, shutdown.clone());
    let task = tokio::spawn(run(engine, bus, bus_settings, ready.clone(), shutdown));
    (ready, task)
}
