//! The Twilio connector: webhooks in (SMS/MMS/WhatsApp, Conversations, status callbacks, Event
//! Streams) and REST sends out.
//!
//! - [`config`]: every `TWILIO_*` setting; [`address`]: phone, WhatsApp, Messenger and
//!   Conversation addresses; [`shared`]: what both wings share; [`opt_out`]: recipients who
//!   replied STOP.
//! - [`ingress`]: the webhooks (a source); [`egress`]: the sink, text splitting, auto-join;
//!   [`rest`]: Twilio's REST API; [`operator`]: `POST /v1/messages`; [`simulate`]: the CLI
//!   that signs a sample webhook.
//! - `websocket` (cargo feature `websocket`): the Conversations socket, a second source of
//!   the same envelopes and optionally the way replies to conversations are posted.
//! - [`console`]: the URLs to paste into the Twilio console; [`prerequisites`]: what a send
//!   needs from the configuration; [`notes`]: what start-up says; [`signing`]: the non-secret
//!   facts of signature checks.

pub mod address;
pub mod config;
pub mod console;
pub mod egress;
pub mod ingress;
pub mod notes;
pub mod operator;
pub mod opt_out;
pub mod prerequisites;
pub mod rest;
pub(crate) mod shared;
pub mod signing;
pub mod simulate;
#[cfg(feature = "websocket")]
pub mod websocket;

pub use shared::INGRESS_SOURCE;

use std::sync::{atomic::AtomicBool, Arc};

use actix_web::web;
use futures_util::future::BoxFuture;
use secrecy::SecretString;
use serde_json::json;
use utoipa::OpenApi;

use crate::{
    banner::ConnectorNotes,
    configuration::{parse::redact_url, ConfigError},
    connectors::{Connector, ConnectorContext, LinkReadiness},
    egress::sink::EgressSink,
    metrics::Metrics,
};
use config::TwilioSettings;
use console::console_urls;
use egress::{auto_join::AutoJoiner, sink::TwilioSink};
use ingress::{signature::SignatureValidator, webhook::WebhookVerifier, IngressContext};
use operator::OperatorContext;
use opt_out::OptOuts;
use shared::{Twilio, CONNECTOR};
use signing::SigningFacts;

/// The connector as registered: its shared state, ingress context and sink.
pub struct TwilioConnector {
    twilio: Twilio,
    ingress: IngressContext,
    operator: OperatorContext,
    sink: Arc<TwilioSink>,
    /// The Conversations socket, when `TWILIO_TRANSPORT` uses it.
    #[cfg(feature = "websocket")]
    socket: Option<websocket::transport::SocketTransport>,
}

impl TwilioConnector {
    /// Reads `TWILIO_*` and builds the connector; `None` when `TWILIO_ENABLED=false`.
    pub fn build(context: &ConnectorContext) -> Result<Option<Arc<dyn Connector>>, ConfigError> {
        let settings = TwilioSettings::from_environment(
            &context.settings.environment,
            context.settings.app_env,
        )?;
        if !settings.enabled {
            return Ok(None);
        }
        // Without PUBLIC_BASE_URL the start-up banner says so, and the first webhook warns.
        if settings.using_development_token {
            // Short enough for one terminal line; the token itself is in `config`.
            tracing::warn!(
                "TWILIO_AUTH_TOKEN is not set: webhooks are checked with the public DEVELOPMENT \
                 token, which anyone can sign with"
            );
        }
        Ok(Some(Arc::new(Self::new(context, settings)?)))
    }

    /// Builds the connector and starts what it runs in the background (the Conversations
    /// socket, when the transport uses it), stopped by `context.shutdown`.
    pub fn new(context: &ConnectorContext, settings: TwilioSettings) -> Result<Self, ConfigError> {
        let verifier = WebhookVerifier {
            validator: SignatureValidator::new(
                settings.auth_token.clone(),
                settings.secondary_auth_token.clone(),
            ),
            public_base_url: context.settings.public_base_url.clone(),
            max_body_bytes: context.settings.max_body_bytes,
            max_json_body_bytes: settings.event_streams_max_body_bytes,
            body_read_timeout: context.settings.body_read_timeout,
            trust_forwarded_headers: context.settings.trust_forwarded_headers,
            warn_unconfigured_url: Arc::new(AtomicBool::new(true)),
        };
        let twilio = Twilio::new(settings, context.publisher.clone(), context.metrics.clone());
        let mut auto_joiner = AutoJoiner::new(
            twilio.settings().identity.clone(),
            twilio.rest().clone(),
            context.metrics.clone(),
        );
        if context.state.is_shared() {
            auto_joiner = auto_joiner.sharing(context.state.clone());
        }
        let auto_joiner =
            auto_joiner.persisting_in(context.settings.outbox_dir.join("pending-joins"));
        let ingress = IngressContext::new(
            twilio.clone(),
            verifier,
            auto_joiner,
            context.ledger.clone(),
            OptOuts::new(context.state.clone()),
        );
        #[cfg(feature = "websocket")]
        let socket = if twilio.settings().transport.uses_socket() {
            Some(websocket::transport::SocketTransport::start(
                ingress.clone(),
                &context.settings.outbox_dir,
                context.shutdown.clone(),
            )?)
        } else {
            None
        };
        let sink = TwilioSink::new(
            twilio.clone(),
            context.ledger.clone(),
            OptOuts::new(context.state.clone()),
        );
        #[cfg(feature = "websocket")]
        let sink = sink.with_socket(socket.as_ref().and_then(|socket| socket.egress()));
        Ok(Self {
            ingress,
            operator: OperatorContext {
                auth: context.operator_auth.clone(),
                twilio: twilio.clone(),
                body_read_timeout: context.settings.body_read_timeout,
            },
            sink: Arc::new(sink),
            twilio,
            #[cfg(feature = "websocket")]
            socket,
        })
    }

    pub fn settings(&self) -> &TwilioSettings {
        self.twilio.settings()
    }

    /// How messages come in and replies go out; with the socket, its connection, identity,
    /// token expiry and conversations (no token, no secret).
    fn transport_snapshot(&self) -> serde_json::Value {
        let settings = self.twilio.settings();
        #[cfg(feature = "websocket")]
        let socket = self.socket.as_ref().map(|socket| socket.snapshot());
        #[cfg(not(feature = "websocket"))]
        let socket: Option<serde_json::Value> = None;
        json!({
            "ingress": settings.transport.as_str(),
            "egress": settings.egress_transport.as_str(),
            "twilsockUrl": redact_url(settings.socket.twilsock_url.as_str()),
            "region": settings.socket.region,
            "tokenTtlSeconds": settings.socket.token_ttl.as_secs(),
            "leaveClosedAfterDays": settings.socket.leave_closed_after_days,
            "socket": socket,
        })
    }

    fn public_base_url(&self) -> Option<&url::Url> {
        self.ingress.verifier().public_base_url.as_ref()
    }
}

impl Connector for TwilioConnector {
    fn name(&self) -> &'static str {
        CONNECTOR
    }

    fn configure_routes(&self, config: &mut web::ServiceConfig) {
        ingress::configure(self.ingress.clone(), config);
        operator::configure(self.operator.clone(), config);
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        let mut doc = ingress::TwilioApi::openapi();
        doc.merge(operator::OperatorApi::openapi());
        doc
    }

    fn egress_sink(&self) -> Option<Arc<dyn EgressSink>> {
        Some(self.sink.clone())
    }

    fn secrets(&self) -> Vec<&SecretString> {
        self.twilio.settings().secrets()
    }

    fn readiness(&self) -> Option<LinkReadiness> {
        #[cfg(feature = "websocket")]
        if let Some(socket) = &self.socket {
            return Some(socket.readiness());
        }
        None
    }

    fn stopped(&self) -> BoxFuture<'static, ()> {
        #[cfg(feature = "websocket")]
        if let Some(socket) = &self.socket {
            return socket.stopped();
        }
        Box::pin(std::future::ready(()))
    }

    fn snapshot(&self) -> serde_json::Value {
        let settings = self.twilio.settings();
        let activity = self.twilio.activity();
        let metrics = self.twilio.metrics();
        let webhooks = |outcome: &str| {
            Metrics::sum_where(
                &metrics.webhook_requests,
                &[("connector", CONNECTOR), ("outcome", outcome)],
            )
        };
        let sends = |outcome: &str| {
            Metrics::sum_where(
                &metrics.egress_sends,
                &[("connector", CONNECTOR), ("outcome", outcome)],
            )
        };
        let received = Metrics::sum_where(&metrics.webhook_requests, &[("connector", CONNECTOR)]);
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
                "outboxDepth": self.twilio.publisher().outbox().depth(),
                "egressSent": sends("sent"),
                "egressRetried": sends("retried"),
                "egressFailed": sends("failed"),
                "egressDeadLettered": sends("dead_lettered"),
                "egressOptedOut": sends("opted_out"),
            },
            "lastInboundAt": activity.last_inbound_at,
            "lastOutboundAt": activity.last_outbound_at,
            "lastError": activity.last_error.map(|(at, message)| json!({"at": at, "message": message})),
            "consoleUrls": self.public_base_url().map(console_urls),
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
                "publicBaseUrl": self.public_base_url().map(|u| u.as_str()),
                "websocketFeature": cfg!(feature = "websocket"),
            },
            "transport": self.transport_snapshot(),
            "signing": SigningFacts::new(settings, self.public_base_url()),
        })
    }

    fn startup_notes(&self, port: u16) -> ConnectorNotes {
        notes::startup_notes(self.settings(), self.public_base_url(), port)
    }
}
