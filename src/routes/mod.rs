//! The service's own routes: health, metrics, debug views and the bus contract. Connector
//! routes (webhooks, operator actions) live with their connector.

pub mod debug;
pub mod event_contract;
pub mod health;
pub mod metrics;
