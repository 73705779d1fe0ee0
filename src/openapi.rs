//! The service's OpenAPI document: operator routes plus every connector's webhooks.

use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::{
    connectors::{Connector, LinkReadiness},
    error::ErrorBody,
    routes,
};

/// `/_debug/{connector}` is documented once per registered connector, as `/_debug/<name>`.
const SNAPSHOT_TEMPLATE: &str = "/_debug/{connector}";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ingress-egress",
        description = "Connects Twilio SMS, MMS, WhatsApp and Conversations to RabbitMQ: signed webhooks become InternalEventV2 events; egress events become Twilio REST sends.\n\nThe messages on RabbitMQ (what the service publishes and consumes, with their AMQP properties and payload schemas) are described by the AsyncAPI document at [/api-docs/asyncapi.yaml](/api-docs/asyncapi.yaml)."
    ),
    paths(
        routes::health::healthz,
        routes::health::livez,
        routes::health::readyz,
        routes::metrics::metrics,
        routes::debug::connector_snapshot,
        routes::debug::recent_events,
    ),
    components(schemas(
        routes::health::Health,
        routes::health::Readiness,
        LinkReadiness,
        ErrorBody
    )),
    modifiers(&BearerAuth),
    tags((name = "operations", description = "Health, metrics and debug views"),
        (name = "operator", description = "Operator actions (bearer DEBUG_TOKEN or OPERATOR_TOKEN)"))
)]
struct OperationsApi;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The full document, as served at `/api-docs/openapi.json` and committed in `openapi/`.
pub fn document<'a>(
    connectors: impl IntoIterator<Item = &'a dyn Connector>,
) -> utoipa::openapi::OpenApi {
    let mut doc = OperationsApi::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let snapshot = doc.paths.paths.remove(SNAPSHOT_TEMPLATE);
    for connector in connectors {
        doc.merge(connector.openapi());
        if let Some(mut item) = snapshot.clone() {
            if let Some(operation) = item.get.as_mut() {
                operation.parameters = None;
                operation.operation_id = Some(format!("{}_snapshot", connector.name()));
            }
            doc.paths
                .paths
                .insert(format!("/_debug/{}", connector.name()), item);
        }
    }
    doc
}
