//! Integration tests: the real application on a random port, a real RabbitMQ, Twilio faked
//! only at the HTTP boundary.

mod helpers;
pub mod fake_twilio;

mod architecture;
mod debug_snapshot;
mod openapi_doc;
mod operator;
mod outbox;
mod signature_fixtures;
mod sms_webhook;
mod fake_twilio_selftest;
mod conversations;
mod event_streams;
mod status_callbacks;
mod egress;
mod egress_support;
mod egress_rest;
mod egress_shutdown;
mod egress_reconnect;
