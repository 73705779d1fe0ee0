//! Platform connectors. Each platform (Twilio today) is one module behind [`Connector`]: it
//! brings its ingress routes (a source), its egress delivery (a sink) and its debug snapshot.
//! Adding a platform means adding a module and registering it in `startup`, nothing else.

pub mod twilio;

use actix_web::web;

pub trait Connector: Send + Sync + 'static {
    /// The `connector` name used in envelopes (`ingress.connector`, `egress.connector`).
    fn name(&self) -> &'static str;

    /// Registers the connector's HTTP routes (webhooks).
    fn configure_routes(&self, config: &mut web::ServiceConfig);

    /// The connector's OpenAPI paths, merged into the service document.
    fn openapi(&self) -> utoipa::openapi::OpenApi;

    /// Non-secret state for `/_debug/<name>`.
    fn snapshot(&self) -> serde_json::Value;
}
