//! Prometheus scrape endpoint.

use actix_web::{web, HttpResponse};

use crate::app_state::AppState;

/// Prometheus text exposition of every metric.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let metrics = &state.metrics;
    metrics
        .outbox_depth
        .set(state.publisher.outbox().depth() as i64);
    metrics
        .broker_connected
        .set(i64::from(state.bus.is_ready()));
    metrics.ready.set(i64::from(state.is_ready()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}
