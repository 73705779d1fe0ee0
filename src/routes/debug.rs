//! Debug views for operators: the connector snapshot and, with the embedded bus, the most recent
//! events. Guarded by `DEBUG_TOKEN`; without one they are open in development and disabled in
//! production.

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use utoipa::IntoParams;

use crate::{configuration::AppEnv, error::ApiError, startup::AppState};

/// Checks `Authorization: Bearer <token>` against the configured tokens.
pub fn authorize(
    req: &HttpRequest,
    state: &AppState,
    tokens: &[&secrecy::SecretString],
) -> Result<(), ApiError> {
    if tokens.is_empty() {
        return if state.settings.app_env == AppEnv::Production {
            Err(ApiError::NotFound)
        } else {
            Ok(())
        };
    }
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized)?;
    let matches = tokens.iter().fold(false, |found, token| {
        found | bool::from(token.expose_secret().as_bytes().ct_eq(presented.as_bytes()))
    });
    if matches {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn debug_tokens(state: &AppState) -> Vec<&secrecy::SecretString> {
    state.settings.debug_token.iter().collect()
}

/// Connector snapshot: state, counters, last error and activity, non-secret configuration.
/// Never a secret, phone number or message body.
#[utoipa::path(get, path = "/_debug/twilio", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Snapshot", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = crate::error::ErrorBody),
        (status = 404, description = "Disabled (production without DEBUG_TOKEN)", body = crate::error::ErrorBody)))]
pub async fn twilio_snapshot(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state, &debug_tokens(&state))?;
    let connector = state
        .connectors
        .iter()
        .find(|c| c.name() == "twilio")
        .ok_or(ApiError::NotFound)?;
    let broker = state.bus.state();
    let egress = state.egress_consuming.as_ref().map(|f| f.get());
    let degraded_reason = if !state.bus.is_ready() {
        Some("broker not connected")
    } else if egress == Some(false) {
        Some("egress consumer not consuming")
    } else if state.publisher.outbox().depth() > 0 {
        Some("events waiting in the outbox")
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({
        "connector": connector.name(),
        "state": if degraded_reason.is_some() { "DEGRADED" } else { "READY" },
        "degradedReason": degraded_reason,
        "instanceId": state.settings.bus.instance_id,
        "appEnv": format!("{:?}", state.settings.app_env).to_lowercase(),
        "broker": {
            "state": broker,
            "url": state.settings.redacted_amqp_url(),
            "exchange": state.settings.bus.exchange,
            "egressQueue": state.settings.bus.egress_queue,
            "busPrefix": state.settings.bus.prefix,
        },
        "egressConsumer": egress,
        "twilio": connector.snapshot(),
    })))
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct EventsQuery {
    /// Only the message with this bus `message_id` (e.g. `twilio:SM…`).
    pub message_id: Option<String>,
}

/// Recent events on the embedded in-memory bus (only when `AMQP_URL` is unset).
#[utoipa::path(get, path = "/_debug/events", tag = "operations",
    params(EventsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recent bus messages with their routing keys, oldest first", body = Object),
        (status = 404, description = "Not using the embedded bus", body = crate::error::ErrorBody)))]
pub async fn recent_events(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state, &debug_tokens(&state))?;
    let bus = state.bus.as_memory().ok_or(ApiError::NotFound)?;
    let events: Vec<_> = bus
        .recent()
        .into_iter()
        .filter(|m| query.message_id.as_ref().is_none_or(|id| &m.message_id == id))
        .map(|m| {
            json!({
                "routingKey": bus.routing_key(&m),
                "messageId": m.message_id,
                "correlationId": m.correlation_id,
                "type": m.kind,
                "timestamp": m.timestamp,
                "body": serde_json::from_str::<serde_json::Value>(&m.body).unwrap_or(serde_json::Value::String(m.body.clone())),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "events": events })))
}
