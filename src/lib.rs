//! ingress-egress: Twilio SMS/MMS/WhatsApp and Conversations ⇄ RabbitMQ.
//!
//! The core is platform-neutral; each platform is a connector. Start with [`startup`] (how the
//! pieces are wired) and `docs/architecture.md`.
//!
//! Core:
//! - [`configuration`]: settings from the environment; [`telemetry`]: logs and traces;
//!   [`metrics`].
//! - [`envelope`]: the `InternalEventV2` every event uses.
//! - [`bus`]: RabbitMQ and the embedded bus, publishing and subscriptions; [`outbox`] and
//!   [`publisher`]: the delivery guarantees of ingress.
//! - [`egress`]: the engine that delivers reply events through connectors' sinks, with its
//!   send ledger; [`state`]: the key-value store such memory lives in.
//! - [`routes`]: health, metrics and debug routes; [`app_state`], [`auth`], [`error`],
//!   [`openapi`], [`readiness`], [`backoff`], [`client_limit`]; [`banner`]: what start-up says.
//!
//! Command-line tools beside `serve`: [`watch`] (and each connector's own, e.g. `simulate`),
//! printing through [`output`].
//!
//! Connectors: [`connectors`] (the trait and the registry); [`connectors::twilio`].

pub mod app_state;
pub mod auth;
pub mod backoff;
pub mod banner;
pub mod bus;
pub mod client_limit;
pub mod configuration;
pub mod connectors;
pub mod egress;
pub mod envelope;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod output;
pub mod publisher;
pub mod readiness;
pub mod routes;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod watch;
