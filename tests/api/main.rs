//! Integration tests: the real application on a random port, a real RabbitMQ, Twilio faked
//! only at the HTTP boundary.

pub mod fake_twilio;
mod helpers;
mod process;

mod architecture;
mod broker_skip;
mod cli;
mod conversations;
mod conversations_service;
mod debug_snapshot;
mod egress;
mod egress_reconnect;
mod egress_rest;
mod egress_shutdown;
mod egress_support;
mod event_streams;
mod fake_twilio_selftest;
mod module_graph;
mod openapi_doc;
mod operator;
mod outbox;
mod readme;
mod second_connector;
mod signature_fixtures;
mod simulate_cli;
mod sms_webhook;
mod status_callbacks;
