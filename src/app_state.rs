//! The state the service's own routes (health, metrics, debug) share. Connector routes get
//! their connector's state instead.

use std::sync::Arc;

use crate::{
    auth::BearerAuth,
    bus::Bus,
    configuration::Settings,
    connectors::Connector,
    metrics::Metrics,
    publisher::EventPublisher,
    readiness::ReadyFlag,
    state::{file::FileStore, redis::RedisStore},
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
    /// Where the ledger, opt-outs and joins live (Redis' state shows on `/readyz`).
    pub state_store: StateBackend,
}

/// The state store behind the service: shared on Redis (`REDIS_URL`), else this instance's
/// journal under `OUTBOX_DIR/state`.
pub enum StateBackend {
    Redis(RedisStore),
    Journal(FileStore),
}

impl StateBackend {
    pub fn redis(&self) -> Option<&RedisStore> {
        match self {
            StateBackend::Redis(redis) => Some(redis),
            StateBackend::Journal(_) => None,
        }
    }
}

impl AppState {
    /// Ready for traffic: the broker connection is up and confirming publishes, when egress
    /// runs its consumer is consuming, and every link a connector holds is up.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    pub fn connector(&self, name: &str) -> Option<&Arc<dyn Connector>> {
        self.connectors.iter().find(|c| c.name() == name)
    }

    /// Why the service is not ready (`/readyz` answers 503 and the snapshot says DEGRADED),
    /// or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.bus.is_ready() {
            return Some("broker not connected".to_owned());
        }
        if self.publisher.confirms_stalled() {
            return Some(
                "broker connected but not confirming publishes (stalled); events go to the outbox"
                    .to_owned(),
            );
        }
        if let Some(egress) = self
            .egress_consuming
            .as_ref()
            .filter(|egress| !egress.get())
        {
            return Some(
                egress
                    .failure()
                    .unwrap_or_else(|| "egress consumer not consuming".to_owned()),
            );
        }
        self.connectors.iter().find_map(|connector| {
            let link = connector.readiness()?;
            (!link.ready).then(|| format!("the {} connector's link is down", connector.name()))
        })
    }
}
