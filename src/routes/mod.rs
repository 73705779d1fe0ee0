//! The service's own routes: health, metrics, debug views, the bus contract and the way to
//! Swagger UI. Connector routes (webhooks, operator actions) live with their connector.

pub mod debug;
pub mod docs;
pub mod event_contract;
pub mod health;
pub mod metrics;
