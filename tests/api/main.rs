//! Integration tests: the real application on a random port, a real RabbitMQ, Twilio faked
//! only at the HTTP boundary.

mod helpers;

mod openapi_doc;
mod outbox;
mod signature_fixtures;
mod sms_webhook;
