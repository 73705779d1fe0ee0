//! ingress-egress: Twilio SMS/MMS/WhatsApp and Conversations ⇄ RabbitMQ.
//!
//! Start with [`startup`] (how the pieces are wired), [`connectors::twilio`] (the platform), and
//! [`publisher`] (the delivery guarantees). The envelope every event uses is in [`envelope`].

pub mod backoff;
pub mod bus;
pub mod configuration;
pub mod connectors;
pub mod egress;
pub mod envelope;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod publisher;
pub mod readiness;
pub mod routes;
pub mod simulate;
pub mod startup;
pub mod telemetry;
