//! The state the service's own routes (health, metrics, debug) share. Connector routes get
//! their connector's state instead.

use std::sync::Arc;

use crate::{
    auth::BearerAuth, bus::Bus, configuration::Settings, connectors::Connector, metrics::Metrics,
    publisher::EventPublisher, readiness::ReadyFlag, state::redis::RedisStore,
};

pub struct AppState {
    pub settings: Arc<Settings>,
    pub bus: Bus,
    pub publisher: EventPublisher,
    pub metrics: Metrics,
    pub connectors: Vec<Arc<dyn Connector>>,
    /// Present when the egress consumer runs; `/readyz` requires it up.
    pub egress_consuming: Option<ReadyFlag>,
    /// Guards the debug routes (`DEBUG_TOKEN`).
    pub debug_auth: BearerAuth,
    /// The shared state store, when `REDIS_URL` is set (its state shows on `/readyz`).
    pub redis: Option<RedisStore>,
}

impl AppState {
    /// Ready for traffic: the broker connection is up and confirming publishes, and, when egress
    /// runs, its consumer is consuming.
    pub fn is_ready(&self) -> bool {
        self.bus.is_ready()
            && !self.publisher.confirms_stalled()
            && self
                .egress_consuming
                .as_ref()
                .is_none_or(|consuming| consuming.get())
            && self
                .connectors
                .iter()
                .filter_map(|connector| connector.readiness())
                .all(|link| link.ready)
    }

    pub fn connector(&self, name: &str) -> Option<&Arc<dyn Connector>> {
        self.connectors.iter().find(|c| c.name() == name)
    }
}
