//! Debug views for operators: each connector's snapshot (`/_debug/<connector>`) and, with the
//! embedded bus, the most recent events. Guarded by `DEBUG_TOKEN`; without one they are open in
//! development and disabled in production.

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use crate::{
    app_state::{AppState, StateBackend},
    error::ApiError,
};

/// The route serving every connector's snapshot.
pub const SNAPSHOT_ROUTE: &str = "/_debug/{connector}";

// Documented once per registered connector, as `/_debug/<name>` (see `crate::openapi`).
/// Connector snapshot: state, counters, last error and activity, non-secret configuration.
/// Never a secret, phone number or message body.
#[utoipa::path(get, path = "/_debug/{connector}", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Snapshot", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = crate::error::ErrorBody),
        (status = 404, description = "Disabled (production without DEBUG_TOKEN)", body = crate::error::ErrorBody)))]
pub async fn connector_snapshot(
    req: HttpRequest,
    state: web::Data<AppState>,
    connector: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.debug_auth.check(&req)?;
    let connector = state.connector(&connector).ok_or(ApiError::NotFound)?;
    let broker = state.bus.state();
    let egress = state.egress_consuming.as_ref().map(|f| f.get());
    let degraded_reason = state.not_ready_reason().or_else(|| {
        if state.publisher.outbox().depth() > 0 {
            Some("events waiting in the outbox".to_owned())
        } else if state
            .state_store
            .redis()
            .is_some_and(|redis| !redis.is_up())
        {
            Some(
                "shared state store (Redis) unreachable: egress paused, ingress deduplicating \
                 locally"
                    .to_owned(),
            )
        } else {
            None
        }
    });
    let mut snapshot = json!({
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
        "brokerConfirmTimeouts": state.metrics.bus_confirm_timeouts.get(),
        "egressConsumer": egress,
        "egressQueueDepth": state.metrics.egress_queue_depth.get(),
        "egressPartitions": egress_partitions(&state),
        "stateStore": match &state.state_store {
            StateBackend::Redis(redis) => json!({"kind": "redis", "redis": redis.status()}),
            StateBackend::Journal(journal) => json!({
                "kind": "file",
                "dir": journal.dir().display().to_string(),
                "entries": journal.len(),
                "journalBytes": journal.journal_bytes(),
                "dedupe": "memory",
            }),
        },
    });
    // The connector's own view sits under its name.
    snapshot[connector.name()] = connector.snapshot();
    let mut secrets = core_secret_values(&state.settings);
    secrets.extend(
        state
            .connectors
            .iter()
            .flat_map(|c| c.secrets())
            .map(|s| s.expose_secret().to_owned()),
    );
    scrub(&mut snapshot, &secrets);
    Ok(HttpResponse::Ok().json(snapshot))
}

/// How egress is partitioned and which partitions this instance actively consumes.
fn egress_partitions(state: &AppState) -> serde_json::Value {
    let count = state.settings.bus.egress_partitions;
    let active: Vec<u16> = (0..count)
        .filter(|index| {
            count > 1
                && state
                    .metrics
                    .egress_partition_active
                    .with_label_values(&[&index.to_string()])
                    .get()
                    == 1
        })
        .collect();
    json!({"count": count, "active": active})
}

/// The core's secret values (connectors add theirs), for [`scrub`].
fn core_secret_values(settings: &crate::configuration::Settings) -> Vec<String> {
    let mut secrets: Vec<String> = [
        settings.debug_token.as_ref(),
        settings.operator_token.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|s| s.expose_secret().to_owned())
    .collect();
    let urls = [
        settings.bus.amqp_url.as_ref(),
        settings.redis.as_ref().map(|redis| &redis.url),
    ];
    for url in urls.into_iter().flatten() {
        if let Some(password) = url::Url::parse(url.expose_secret())
            .ok()
            .and_then(|u| u.password().map(str::to_owned))
        {
            secrets.push(password);
        }
    }
    secrets
}

/// Last line of defence for the snapshot (error texts come from brokers and platforms): masks the
/// configured secrets and anything shaped like a phone number (`+` and 8 to 15 digits) in every
/// string.
pub fn scrub(value: &mut serde_json::Value, secrets: &[String]) {
    use serde_json::Value;
    match value {
        Value::String(text) => {
            let mut masked = text.clone();
            for secret in secrets.iter().filter(|s| s.len() >= 4) {
                masked = masked.replace(secret.as_str(), "***");
            }
            *text = mask_phone_numbers(&masked);
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub(v, secrets)),
        Value::Object(map) => map.values_mut().for_each(|v| scrub(v, secrets)),
        _ => {}
    }
}

/// Replaces `+` followed by 8 to 15 digits with `+***`.
fn mask_phone_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('+') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if (8..=15).contains(&digits) {
            out.push_str("+***");
            rest = &after[digits..];
        } else {
            out.push('+');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod scrub_tests {
    use super::*;

    #[test]
    fn secrets_and_phone_numbers_are_masked_everywhere() {
        let mut value = json!({
            "lastError": "Twilio 21211: The 'To' number +15005550009 is not valid (token s3cr3t-token)",
            "nested": [{"at": "2026-11-25T09:00:00+00:00", "n": 3, "who": "whatsapp:+4915112345678"}],
        });
        scrub(&mut value, &["s3cr3t-token".to_owned(), "x".to_owned()]);
        let text = value.to_string();
        assert!(!text.contains("15005550009"), "{text}");
        assert!(!text.contains("4915112345678"), "{text}");
        assert!(!text.contains("s3cr3t-token"), "{text}");
        assert!(text.contains("+00:00"), "short digit runs stay: {text}");
        assert!(text.contains("Twilio 21211"), "{text}");
        assert_eq!(value["nested"][0]["n"], 3);
    }
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
    state.debug_auth.check(&req)?;
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
