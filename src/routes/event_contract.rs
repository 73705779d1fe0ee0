//! The contract of the bus, served beside the OpenAPI document: the AsyncAPI description of
//! every message the service publishes and consumes (`/api-docs/asyncapi.yaml`), and the JSON
//! Schemas its payloads `$ref` by relative path, served at `/api-docs/<file>` so those
//! references resolve against the served document exactly as they do in the repository's
//! `openapi/` folder. The files are compiled in: what is served is what is committed.

use actix_web::{web, HttpResponse};

/// Where the AsyncAPI document is served.
pub const ASYNCAPI_PATH: &str = "/api-docs/asyncapi.yaml";

const ASYNCAPI: &str = include_str!("../../openapi/asyncapi.yaml");

/// The payload schemas the AsyncAPI document references, by file name.
pub const SCHEMAS: &[(&str, &str)] = &[
    (
        "internal-event-v2.schema.json",
        include_str!("../../openapi/internal-event-v2.schema.json"),
    ),
    (
        "message-status-v1.schema.json",
        include_str!("../../openapi/message-status-v1.schema.json"),
    ),
    (
        "egress-status-v1.schema.json",
        include_str!("../../openapi/egress-status-v1.schema.json"),
    ),
    (
        "deadletter-v1.schema.json",
        include_str!("../../openapi/deadletter-v1.schema.json"),
    ),
];

pub fn configure(config: &mut web::ServiceConfig) {
    config.route(
        ASYNCAPI_PATH,
        web::get().to(|| async {
            HttpResponse::Ok()
                .content_type("application/yaml")
                .body(ASYNCAPI)
        }),
    );
    for (name, schema) in SCHEMAS {
        config.route(
            &format!("/api-docs/{name}"),
            web::get().to(move || async move {
                HttpResponse::Ok()
                    .content_type("application/schema+json")
                    .body(*schema)
            }),
        );
    }
}
