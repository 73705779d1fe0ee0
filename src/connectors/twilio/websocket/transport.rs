//! Starts the socket for the Twilio connector (when `TWILIO_TRANSPORT` is `websocket` or
//! `both`) and reports on it: the client from the connector's settings, checkpoints under
//! `OUTBOX_DIR/websocket/`, the publishing task ([`super::ingress`]), the metrics collector,
//! readiness and the snapshot. Everything stops with the service's shutdown signal.

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::checkpoint::FileCheckpointStore;
use super::client::{Client, ClientHandle};
use super::egress::SocketEgress;
use super::metrics::SocketMetrics;
use super::options::Config;
use super::session::TransportState;
use crate::{
    configuration::ConfigError,
    connectors::{
        twilio::{
            config::{EgressTransport, TwilioSettings},
            ingress::IngressContext,
        },
        LinkReadiness,
    },
};

/// Where the checkpoints live, under `OUTBOX_DIR`.
pub const CHECKPOINT_DIR: &str = "websocket";

pub struct SocketTransport {
    client: ClientHandle,
    egress: Option<Arc<SocketEgress>>,
    publishing: Mutex<Option<JoinHandle<()>>>,
}

impl SocketTransport {
    /// Connects (in the background) and starts publishing what arrives. Fails only on
    /// settings the socket cannot start with.
    pub fn start(
        ingress: IngressContext,
        outbox_dir: &Path,
        shutdown: CancellationToken,
    ) -> Result<Self, ConfigError> {
        let settings = ingress.settings();
        let config = client_config(settings)?;
        let directory = outbox_dir.join(CHECKPOINT_DIR);
        let store = FileCheckpointStore::open(&directory)
            .map_err(|error| ConfigError::new("OUTBOX_DIR", error.to_string()))?;
        tracing::info!(
            url = %settings.socket.twilsock_url,
            transport = settings.transport.as_str(),
            egress = settings.egress_transport.as_str(),
            checkpoints = %directory.display(),
            "starting the Conversations socket"
        );
        let (messages, client) = Client::start(config, Arc::new(store), shutdown.clone())
            .map_err(|error| ConfigError::new("TWILIO_TRANSPORT", error.to_string()))?;
        let metrics = ingress.metrics();
        metrics.register_collector(Box::new(SocketMetrics::new(client.clone())));
        let outcomes = metrics.register_counter_vec(
            "twilio_socket_messages_total",
            "Messages from the Conversations socket by outcome (published, outboxed, duplicate, \
             own, rejected, retried)",
            &["outcome"],
        );
        let egress = (settings.egress_transport == EgressTransport::Websocket)
            .then(|| Arc::new(SocketEgress::new(client.clone(), (*ingress).clone())));
        let publishing = tokio::spawn(super::ingress::run(
            messages,
            client.clone(),
            ingress,
            outcomes,
            shutdown,
        ));
        Ok(Self {
            client,
            egress,
            publishing: Mutex::new(Some(publishing)),
        })
    }

    pub fn client(&self) -> &ClientHandle {
        &self.client
    }

    /// The sender for `CH…` replies, when `TWILIO_EGRESS_TRANSPORT=websocket`.
    pub fn egress(&self) -> Option<Arc<SocketEgress>> {
        self.egress.clone()
    }

    /// Ready while the socket is connected.
    pub fn readiness(&self) -> LinkReadiness {
        let state = self.client.state().borrow().clone();
        LinkReadiness {
            ready: state == TransportState::Connected,
            detail: json!({ "transport": "websocket", "connection": state }),
        }
    }

    pub fn snapshot(&self) -> serde_json::Value {
        self.client.snapshot()
    }

    /// After the shutdown signal: waits for the publishing task and the client, then writes
    /// the checkpoints of what was published last.
    pub fn stopped(&self) -> BoxFuture<'static, ()> {
        let publishing = self
            .publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let client = self.client.clone();
        Box::pin(async move {
            if let Some(publishing) = publishing {
                let _ = publishing.await;
            }
            client.stopped().await;
            if let Err(error) = client.flush_checkpoints().await {
                tracing::error!(%error, "socket checkpoints not written at shutdown");
            }
        })
    }
}

/// The client's configuration from the connector's settings (validated to hold every
/// credential when the transport uses the socket).
fn client_config(settings: &TwilioSettings) -> Result<Config, ConfigError> {
    let required = |variable: &'static str, value: Option<String>| {
        value.ok_or_else(|| ConfigError::new(variable, "required by the socket transport"))
    };
    let mut config = Config::new(
        required("TWILIO_ACCOUNT_SID", settings.account_sid.clone())?,
        required("TWILIO_API_KEY", settings.api_key.clone())?,
        settings
            .api_secret
            .clone()
            .filter(|secret| !secret.expose_secret().is_empty())
            .ok_or_else(|| {
                ConfigError::new("TWILIO_API_SECRET", "required by the socket transport")
            })?,
        required("TWILIO_CHAT_SERVICE_SID", settings.chat_service_sid.clone())?,
        required("TWILIO_IDENTITY", settings.identity.clone())?,
        settings.socket.twilsock_url.as_str(),
    );
    config.region = settings.socket.region.clone();
    config.token_ttl = settings.socket.token_ttl;
    config.leave_closed_after_days = settings.socket.leave_closed_after_days;
    Ok(config)
}
