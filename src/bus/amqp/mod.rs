//! RabbitMQ (AMQP 0-9-1) bus: one long-lived connection and its confirm-mode publishing
//! channels, re-established with backoff when the broker goes away.
//!
//! A supervisor task owns the connection. Publishers borrow the current [`Link`] (a cheap `Arc`
//! clone; no lock is held across the confirm wait), so many confirms are in flight at once on
//! its publishing channels, which publishers take in turn. Each publisher awaits its own
//! confirm, so what one task publishes in sequence stays in order. Consumers
//! ([`subscription`]) watch [`AmqpBus::links`] and open their own channel on each new
//! connection; what they declare is in [`topology`]; [`tap`] watches what the service
//! publishes; [`router`] spreads the shared egress queue over partition queues.

pub mod router;
mod settlements;
pub mod subscription;
pub mod tap;
pub mod topology;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties, Channel, Connection, ConnectionProperties,
};
use secrecy::ExposeSecret;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::message::{
    routing_key, BusMessage, BusState, PublishError, APP_ID, POSSIBLE_DUPLICATE_HEADER,
};
use crate::{
    backoff::Backoff,
    configuration::{scrub_url_password, BusSettings},
    telemetry::trace_context::TRACEPARENT,
};
use topology::declare_exchange;

/// How long one connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many confirm-mode channels publishers share, taken in turn. A second channel lets the
/// broker work on two publishes at once (each channel is one process in RabbitMQ, confirming in
/// order); measured in `benches/ingress_throughput.rs`: less CPU per webhook and more of them
/// per second than with one, while more than two brought nothing more on two cores.
const PUBLISH_CHANNELS: usize = 2;

/// A live connection and its confirm-mode publishing channels.
pub struct Link {
    pub connection: Connection,
    /// The first publishing channel (the one the exchange was declared on).
    pub channel: Channel,
    /// Every publishing channel, `channel` first; publishers take them in turn.
    publishers: Vec<Channel>,
    next: std::sync::atomic::AtomicUsize,
}

impl Link {
    /// The channel the next publish goes out on.
    fn publisher(&self) -> &Channel {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.publishers[turn % self.publishers.len()]
    }
}

#[derive(Clone)]
pub struct AmqpBus {
    inner: Arc<Inner>,
}

struct Inner {
    settings: BusSettings,
    link: watch::Sender<Option<Arc<Link>>>,
    last_error: Mutex<Option<String>>,
    reconnect: Notify,
    shutdown: CancellationToken,
}

impl AmqpBus {
    /// Creates the bus and starts connecting in the background.
    pub fn new(settings: BusSettings) -> Self {
        let (link, _) = watch::channel(None);
        let bus = Self {
            inner: Arc::new(Inner {
                settings,
                link,
                last_error: Mutex::new(None),
                reconnect: Notify::new(),
                shutdown: CancellationToken::new(),
            }),
        };
        tokio::spawn(supervise(bus.inner.clone()));
        bus
    }

    pub fn settings(&self) -> &BusSettings {
        &self.inner.settings
    }

    pub fn is_connected(&self) -> bool {
        self.inner.link.borrow().is_some()
    }

    pub fn state(&self) -> BusState {
        if self.is_connected() {
            BusState::Connected
        } else {
            BusState::Connecting {
                last_error: self.inner.last_error.lock().expect("poisoned").clone(),
            }
        }
    }

    /// Follows the current connection: `Some` while connected, replaced on every reconnect.
    pub fn links(&self) -> watch::Receiver<Option<Arc<Link>>> {
        self.inner.link.subscribe()
    }

    /// Publishes `message` to the exchange and waits for the broker's confirm.
    pub async fn publish(
        &self,
        message: &BusMessage,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let link = self
            .inner
            .link
            .borrow()
            .clone()
            .ok_or(PublishError::NotConnected)?;
        let settings = &self.inner.settings;
        let routing_key = routing_key(&settings.prefix, &message.topic);
        let publish = async {
            link.publisher()
                .basic_publish(
                    settings.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    message.body.as_bytes(),
                    properties(message),
                )
                .await?
                .await
        };
        match tokio::time::timeout(timeout, publish).await {
            Err(_) => Err(PublishError::ConfirmTimeout(timeout)),
            Ok(Ok(confirmation)) if confirmation.is_ack() => Ok(()),
            Ok(Ok(_)) => Err(PublishError::Nacked),
            Ok(Err(error)) => {
                self.report_broken(&link, &error);
                Err(PublishError::Broker(error.to_string()))
            }
        }
    }

    /// Tells the supervisor that `link` failed, so it reconnects (once, however many callers
    /// saw the same failure).
    pub fn report_broken(&self, link: &Arc<Link>, error: &lapin::Error) {
        let was_current = self.inner.link.send_if_modified(|current| match current {
            Some(current_link) if Arc::ptr_eq(current_link, link) => {
                *current = None;
                true
            }
            _ => false,
        });
        if was_current {
            tracing::warn!(%error, "broker link failed; reconnecting");
            *self.inner.last_error.lock().expect("poisoned") = Some(error.to_string());
            self.inner.reconnect.notify_one();
        }
    }

    /// Stops reconnecting and closes the connection.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        let link = self.inner.link.send_replace(None);
        if let Some(link) = link {
            for channel in &link.publishers {
                let _ = channel.close(200, "shutdown".into()).await;
            }
            let _ = link.connection.close(200, "shutdown".into()).await;
        }
    }
}

/// The AMQP properties and CloudEvents headers every published message carries. Public so that
/// the ingress benchmark's bare publisher sends what the service sends: the broker's work per
/// message grows with them.
pub fn properties(message: &BusMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut header = |name: &str, value: &str| {
        headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
    };
    header("cloudEvents:specversion", "1.0");
    header("cloudEvents:id", &message.message_id);
    header("cloudEvents:source", &message.source);
    header("cloudEvents:type", &message.kind);
    header("cloudEvents:time", &message.timestamp.to_rfc3339());
    header("cloudEvents:datacontenttype", "application/json");
    if let Some(traceparent) = &message.trace_parent {
        header(TRACEPARENT, traceparent);
    }
    if message.possible_duplicate {
        headers.insert(
            ShortString::from(POSSIBLE_DUPLICATE_HEADER),
            AMQPValue::Boolean(true),
        );
    }

    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(message.message_id.as_str().into())
        .with_correlation_id(message.correlation_id.as_str().into())
        .with_type(message.kind.as_str().into())
        .with_timestamp(message.timestamp.timestamp().max(0) as u64)
        .with_app_id(APP_ID.into())
        .with_headers(headers)
}

async fn supervise(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        match connect(&inner.settings).await {
            Ok(link) => {
                backoff.reset();
                *inner.last_error.lock().expect("poisoned") = None;
                let mut events = link.connection.events_listener();
                let link = Arc::new(link);
                inner.link.send_replace(Some(link.clone()));
                tracing::info!(exchange = %inner.settings.exchange, "connected to the broker");
                tokio::select! {
                    error = async {
                        while let Some(event) = events.next().await {
                            if let lapin::Event::Error(error) = event {
                                return Some(error);
                            }
                        }
                        None
                    } => {
                        let reason = error.map_or_else(|| "connection closed".to_owned(), |e| e.to_string());
                        tracing::warn!(%reason, "broker connection lost");
                        *inner.last_error.lock().expect("poisoned") = Some(reason);
                    }
                    _ = inner.reconnect.notified() => {}
                    _ = inner.shutdown.cancelled() => return,
                }
                inner.link.send_if_modified(|current| match current {
                    Some(current_link) if Arc::ptr_eq(current_link, &link) => {
                        *current = None;
                        true
                    }
                    _ => false,
                });
                let _ = link.connection.close(320, "reconnecting".into()).await;
            }
            Err(error) => {
                tracing::warn!(%error, attempt = backoff.attempts() + 1, "cannot reach the broker");
                *inner.last_error.lock().expect("poisoned") = Some(error);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

async fn connect(settings: &BusSettings) -> Result<Link, String> {
    let url = settings
        .amqp_url
        .as_ref()
        .ok_or_else(|| "AMQP_URL is not set".to_owned())?;
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("{APP_ID}/{}", settings.instance_id).into());
    let setup = async {
        let connection = Connection::connect(url.expose_secret(), properties).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare_exchange(&channel, &settings.exchange).await?;
        let mut publishers = vec![channel.clone()];
        for _ in 1..PUBLISH_CHANNELS {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            publishers.push(channel);
        }
        Ok::<_, lapin::Error>(Link {
            connection,
            channel,
            publishers,
            next: Default::default(),
        })
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
        Err(_) => Err(format!("connect timed out after {CONNECT_TIMEOUT:?}")),
        Ok(result) => result.map_err(|e| scrub_url_password(&e.to_string(), url.expose_secret())),
    }
}
