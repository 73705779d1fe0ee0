//! Liveness and readiness probes.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{app_state::AppState, connectors::LinkReadiness};

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
    /// `ok`, or `timing_out` when the broker let a publish confirm time out recently and has
    /// confirmed nothing since (connected but stalled: webhooks go to the outbox).
    #[schema(example = "ok")]
    pub broker_confirms: &'static str,
    /// Whether the egress consumer is consuming (absent when egress is not running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_consumer: Option<bool>,
    pub outbox_depth: usize,
    /// The shared state store (`REDIS_URL`): `up` or `down`; absent without one. Not a
    /// readiness condition: ingress goes on without it (deduplicating locally) and egress
    /// pauses until it is back, so taking the instance out of service would only refuse
    /// webhooks.
    #[schema(example = "up")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<&'static str>,
    /// Each connector's own link (e.g. a platform WebSocket), when it holds one; the service
    /// is not ready while one is down. Absent when no connector holds a link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connectors: Option<BTreeMap<String, LinkReadiness>>,
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

/// Ready to take traffic: the broker connection is up and confirming publishes, and the egress
/// consumer is consuming.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Broker or egress consumer down", body = Readiness)))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let reason = state.not_ready_reason();
    let ready = reason.is_none();
    let stalled = state.publisher.confirms_stalled();
    let egress_consumer = state.egress_consuming.as_ref().map(|flag| flag.get());
    let links: BTreeMap<String, LinkReadiness> = state
        .connectors
        .iter()
        .filter_map(|c| Some((c.name().to_owned(), c.readiness()?)))
        .collect();
    let broker = match state.bus.state() {
        crate::bus::BusState::Connected => "connected",
        crate::bus::BusState::Connecting { .. } => "connecting",
        crate::bus::BusState::Embedded => "embedded",
    };
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        broker: broker.to_owned(),
        broker_confirms: if stalled { "timing_out" } else { "ok" },
        egress_consumer,
        outbox_depth: state.publisher.outbox().depth(),
        redis: state
            .state_store
            .redis()
            .map(|redis| if redis.is_up() { "up" } else { "down" }),
        connectors: (!links.is_empty()).then_some(links),
        reason,
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
