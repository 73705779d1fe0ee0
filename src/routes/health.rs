//! Liveness and readiness probes.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app_state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// Broker connection: `connected`, `connecting` or `embedded`.
    #[schema(example = "connected")]
    pub broker: String,
    /// Whether the egress consumer is consuming (absent when egress is not running).
    pub egress_consumer: Option<bool>,
    pub outbox_depth: usize,
    /// Why the service is not ready (absent when it is), e.g. an egress queue that exists with
    /// another type.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "broker not connected")]
    pub reason: Option<String>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// The process is alive (Kubernetes-style alias of `/healthz`).
#[utoipa::path(get, path = "/livez", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Ready to take traffic: the broker connection is up and the egress consumer is consuming.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Broker or egress consumer down", body = Readiness)))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let egress_consumer = state.egress_consuming.as_ref().map(|flag| flag.get());
    let reason = state.not_ready_reason();
    let ready = reason.is_none();
    let broker = match state.bus.state() {
        crate::bus::BusState::Connected => "connected",
        crate::bus::BusState::Connecting { .. } => "connecting",
        crate::bus::BusState::Embedded => "embedded",
    };
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        broker: broker.to_owned(),
        egress_consumer,
        outbox_depth: state.publisher.outbox().depth(),
        reason,
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
