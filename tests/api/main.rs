//! Integration tests: the real application on a random port, a real RabbitMQ, Twilio faked
//! only at the HTTP boundary.

pub mod fake_twilio;
mod hardening;
mod helpers;
mod process;

mod architecture;
mod asyncapi;
mod broker_proxy;
mod broker_skip;
mod broker_trouble;
mod bus_settlements;
mod cli;
mod connector_link;
mod conversations;
mod conversations_service;
mod debug_snapshot;
mod deploy_assets;
mod echo_bot;
mod egress;
mod egress_fidelity;
mod egress_once;
mod egress_reconnect;
mod egress_rest;
mod egress_shutdown;
mod egress_support;
mod event_streams;
mod fake_twilio_selftest;
mod many_instances;
mod module_graph;
mod openapi_doc;
mod operator;
mod outbox;
mod readme;
mod replicas;
mod second_connector;
mod shared_state;
mod signature_fixtures;
mod simulate_cli;
mod sms_webhook;
mod startup_errors;
mod status_callbacks;
mod traces;
