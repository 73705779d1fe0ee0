//! The state the service's own routes (health, metrics, debug) share. Connector routes get
//! their connector's state instead.

use std::sync::Arc;

use crate::{
    auth::BearerAuth, bus::Bus, configuration::Settings, connectors::Connector, metrics::Metrics,
    publisher::EventPublisher, readiness::ReadyFlag,
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
}

impl AppState {
    pub fn connector(&self, name: &str) -> Option<&Arc<dyn Connector>> {
        self.connectors.iter().find(|c| c.name() == name)
    }

    /// Why the service is not ready (`/readyz` answers 503 and the snapshot says DEGRADED),
    /// or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.bus.is_ready() {
            return Some("broker not connected".to_owned());
        }
        let egress = self.egress_consuming.as_ref()?;
        if egress.get() {
            return None;
        }
        Some(
            egress
                .failure()
                .unwrap_or_else(|| "egress consumer not consuming".to_owned()),
        )
    }
}
