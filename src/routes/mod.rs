//! Operator routes: health, metrics, API documentation and debug views. Connector webhooks
//! live with their connector (`connectors::*::routes`).

pub mod debug;
pub mod health;
pub mod metrics;
pub mod operator;
