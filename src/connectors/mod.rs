//! Platform connectors. Each platform is one folder behind [`Connector`]: it brings its ingress
//! routes (a source), its egress delivery (an [`EgressSink`]) and its debug snapshot, and is
//! listed once in [`registry`]. The core (bus, publisher, egress engine, operator routes) never
//! names a platform.

pub mod registry;
pub mod twilio;

use std::sync::Arc;

use actix_web::web;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::BearerAuth, banner::ConnectorNotes, configuration::Settings, egress::sink::EgressSink,
    metrics::Metrics, publisher::EventPublisher,
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

    /// What the start-up banner says about the connector, for a service listening on `port`.
    fn startup_notes(&self, port: u16) -> ConnectorNotes {
        let _ = port;
        ConnectorNotes {
            connector: self.name(),
            ..ConnectorNotes::default()
        }
    }
}

/// What a connector is built from: the settings (its own are read from
/// `settings.environment`), the shared publisher and metrics, the operator guard and the
/// service's stop signal.
#[derive(Clone)]
pub struct ConnectorContext {
    pub settings: Arc<Settings>,
    pub publisher: EventPublisher,
    pub metrics: Metrics,
    pub operator_auth: BearerAuth,
    pub shutdown: CancellationToken,
}
