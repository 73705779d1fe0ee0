//! Platform connectors. Each platform is one folder behind [`Connector`]: it brings its ingress
//! routes (a source), its egress delivery (an [`EgressSink`]) and its debug snapshot, and is
//! listed once in [`registry`]. The core (bus, publisher, egress engine, operator routes) never
//! names a platform.

pub mod registry;
pub mod twilio;

use std::sync::Arc;

use actix_web::web;
use futures_util::future::BoxFuture;
use secrecy::SecretString;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::{
    auth::BearerAuth,
    banner::ConnectorNotes,
    configuration::Settings,
    egress::{ledger::SendLedger, sink::EgressSink},
    metrics::Metrics,
    publisher::EventPublisher,
    state::StateStore,
};

/// One platform, as the rest of the service sees it.
pub trait Connector: Send + Sync + 'static {
    /// The `connector` name used in envelopes (`ingress.connector`, `egress.connector`), in
    /// metric labels and in `/_debug/<name>`.
    fn name(&self) -> &'static str;

    /// Registers the connector's HTTP routes (webhooks, operator actions).
    fn configure_routes(&self, config: &mut web::ServiceConfig);

    /// The connector's OpenAPI paths, merged into the service document.
    fn openapi(&self) -> utoipa::openapi::OpenApi;

    /// Where egress events addressed to this connector are delivered, if it sends at all.
    fn egress_sink(&self) -> Option<Arc<dyn EgressSink>>;

    /// Non-secret state for `/_debug/<name>`.
    fn snapshot(&self) -> serde_json::Value;

    /// The secrets the connector holds, masked wherever the service shows text it did not
    /// write itself (the debug snapshot).
    fn secrets(&self) -> Vec<&SecretString>;

    /// The state of a link the connector holds itself (a platform socket), for `/readyz`;
    /// `None` when it holds none.
    fn readiness(&self) -> Option<LinkReadiness> {
        None
    }

    /// Completes once the background work the connector started (stopped by
    /// `ConnectorContext::shutdown`) has finished; the service waits for it when it stops.
    fn stopped(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }

    /// What the start-up banner says about the connector, for a service listening on `port`.
    fn startup_notes(&self, port: u16) -> ConnectorNotes {
        let _ = port;
        ConnectorNotes {
            connector: self.name(),
            ..ConnectorNotes::default()
        }
    }
}

/// A connector's own link to its platform, as `/readyz` reports it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LinkReadiness {
    /// Whether the link is up; the service is not ready while it is down.
    pub ready: bool,
    /// What the link is and how it is doing (non-secret), e.g.
    /// `{"transport": "websocket", "connection": {"state": "connected"}}`.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// What a connector is built from: the settings (its own are read from
/// `settings.environment`), the shared publisher and metrics, the operator guard, the state
/// store and the send ledger (which the connector's ingress may complete, e.g. from delivery
/// callbacks), and the service's stop signal, which also stops whatever background work a
/// connector starts while it is built.
#[derive(Clone)]
pub struct ConnectorContext {
    pub settings: Arc<Settings>,
    pub publisher: EventPublisher,
    pub metrics: Metrics,
    pub operator_auth: BearerAuth,
    pub state: Arc<dyn StateStore>,
    pub ledger: SendLedger,
    pub shutdown: CancellationToken,
}
