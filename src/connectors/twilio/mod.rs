//! The Twilio connector: webhooks in (SMS/MMS/WhatsApp, Conversations, status callbacks) and
//! REST sends out.

pub mod conversations;
pub mod egress_sink;
pub mod event_streams;
pub mod inbound;
pub mod participants;
pub mod rest;
pub mod routes;
pub mod signature;
pub mod sms;
pub mod status;
pub mod webhook;

use std::sync::{Arc, Mutex};

use actix_web::web;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::{
    configuration::{Settings, TwilioSettings},
    metrics::Metrics,
    publisher::EventPublisher,
};
use signature::SignatureValidator;
use webhook::WebhookVerifier;

/// `ingress.connector` / `egress.connector`.
pub const CONNECTOR: &str = "twilio";
/// `identity.external.platform`.
pub const PLATFORM: &str = "twilio";
/// `ingress.source`, also the CloudEvents `source` of what we publish.
pub const INGRESS_SOURCE: &str = "ingress.twilio";

/// Shared state of the Twilio connector, handed to its routes.
#[derive(Clone)]
pub struct TwilioConnector {
    inner: Arc<Inner>,
}

struct Inner {
    settings: TwilioSettings,
    verifier: WebhookVerifier,
    publisher: EventPublisher,
    metrics: Metrics,
    activity: Mutex<Activity>,
    rest: rest::TwilioRest,
    auto_joiner: participants::AutoJoiner,
}

/// Timestamps and the last error, for the debug snapshot.
#[derive(Default, Clone)]
struct Activity {
    last_inbound_at: Option<DateTime<Utc>>,
    last_outbound_at: Option<DateTime<Utc>>,
    last_error: Option<(DateTime<Utc>, String)>,
}

impl TwilioConnector {
    pub fn new(settings: &Settings, publisher: EventPublisher, metrics: Metrics) -> Self {
        let twilio = settings.twilio.clone();
        let rest = rest::TwilioRest::new(&twilio);
        let verifier = WebhookVerifier {
            validator: SignatureValidator::new(
                twilio.auth_token.clone(),
                twilio.secondary_auth_token.clone(),
            ),
            public_base_url: settings.public_base_url.clone(),
            max_body_bytes: settings.max_body_bytes,
        };
        let auto_joiner =
            participants::AutoJoiner::new(twilio.identity.clone(), rest.clone(), metrics.clone())
                .persisting_in(settings.outbox_dir.join("pending-joins"));
        Self {
            inner: Arc::new(Inner {
                settings: twilio,
                verifier,
                publisher,
                metrics,
                activity: Mutex::new(Activity::default()),
                auto_joiner,
                rest,
            }),
        }
    }

    pub fn settings(&self) -> &TwilioSettings {
        &self.inner.settings
    }

    pub fn verifier(&self) -> &WebhookVerifier {
        &self.inner.verifier
    }

    pub fn publisher(&self) -> &EventPublisher {
        &self.inner.publisher
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Adds the bot to Conversations it is not part of yet (auto-join).
    pub fn auto_joiner(&self) -> &participants::AutoJoiner {
        &self.inner.auto_joiner
    }

    /// The Twilio REST client (one pooled HTTP client for the whole connector).
    pub fn rest(&self) -> &rest::TwilioRest {
        &self.inner.rest
    }

    pub fn record_inbound(&self) {
        self.inner
            .activity
            .lock()
            .expect("poisoned")
            .last_inbound_at = Some(Utc::now());
    }

    pub fn record_outbound(&self) {
        self.inner
            .activity
            .lock()
            .expect("poisoned")
            .last_outbound_at = Some(Utc::now());
    }

    /// Remembers an error for the snapshot; `message` must hold no secret or message content.
    pub fn record_error(&self, message: impl Into<String>) {
        self.inner.activity.lock().expect("poisoned").last_error =
            Some((Utc::now(), message.into()));
    }
}

impl crate::connectors::Connector for TwilioConnector {
    fn name(&self) -> &'static str {
        CONNECTOR
    }

    fn configure_routes(&self, config: &mut web::ServiceConfig) {
        routes::configure(self.clone(), config);
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        use utoipa::OpenApi;
        routes::TwilioApi::openapi()
    }

    fn snapshot(&self) -> serde_json::Value {
        let settings = &self.inner.settings;
        let activity = self.inner.activity.lock().expect("poisoned").clone();
        let metrics = &self.inner.metrics;
        let webhooks = |outcome: &str| {
            Metrics::sum(&metrics.webhook_requests, |labels| {
                labels.iter().any(|(k, v)| *k == "outcome" && *v == outcome)
            })
        };
        let sends = |outcome: &str| {
            Metrics::sum(&metrics.twilio_sends, |labels| {
                labels.iter().any(|(k, v)| *k == "outcome" && *v == outcome)
            })
        };
        let received = Metrics::sum(&metrics.webhook_requests, |_| true);
        json!({
            "enabled": settings.enabled,
            "developmentToken": settings.using_development_token,
            "counters": {
                "received": received,
                "published": webhooks("published") + webhooks("outboxed"),
                "deduplicated": webhooks("duplicate"),
                "ignored": webhooks("ignored"),
                "rejectedSignatures": webhooks("bad_signature"),
                "rejectedOther": webhooks("bad_request") + webhooks("too_large") + webhooks("unsupported_media_type"),
                "outboxDepth": self.inner.publisher.outbox().depth(),
                "egressSent": sends("sent"),
                "egressRetried": sends("retried"),
                "egressFailed": sends("failed"),
                "egressDeadLettered": sends("dead_lettered"),
                "egressOptedOut": sends("opted_out"),
            },
            "lastInboundAt": activity.last_inbound_at,
            "lastOutboundAt": activity.last_outbound_at,
            "lastError": activity.last_error.map(|(at, message)| json!({"at": at, "message": message})),
            "config": {
                "accountSid": settings.account_sid,
                "sender": {
                    "phoneNumberConfigured": settings.phone_number.is_some(),
                    "messagingServiceSid": settings.messaging_service_sid,
                },
                "identity": settings.identity,
                "chatServiceSid": settings.chat_service_sid,
                "apiBaseUrl": settings.api_base_url.as_str(),
                "conversationsBaseUrl": settings.conversations_base_url.as_str(),
                "restAuth": if settings.api_key.is_some() { "api_key" } else { "auth_token" },
                "secondaryAuthTokenConfigured": settings.secondary_auth_token.is_some(),
                "statusCallbackConfigured": settings.status_callback_url.is_some(),
                "maxSendRate": settings.max_send_rate,
                "publicBaseUrl": self.inner.verifier.public_base_url.as_ref().map(|u| u.as_str()),
                "websocketFeature": cfg!(feature = "websocket"),
            }
        })
    }
}
