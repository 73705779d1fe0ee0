//! The service's own routes: health, metrics and debug views. Connector routes (webhooks,
//! operator actions) live with their connector.

pub mod debug;
pub mod health;
pub mod metrics;
