//! What both wings of the Twilio connector share: its names on the bus, its settings, the REST
//! client, the publisher and metrics, and the activity record the debug snapshot shows.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::{config::TwilioSettings, rest::TwilioRest};
use crate::{metrics::Metrics, publisher::EventPublisher};

/// `ingress.connector` / `egress.connector`, and the `connector` metric label.
pub const CONNECTOR: &str = "twilio";
/// `identity.external.platform`.
pub const PLATFORM: &str = "twilio";
/// `ingress.source`, also the CloudEvents `source` of what we publish.
pub const INGRESS_SOURCE: &str = "ingress.twilio";

/// `Attributes.origin` of every conversation message the connector posts; such messages are
/// never republished.
pub const OWN_ORIGIN: &str = "ingress-egress";

/// Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct Twilio {
    inner: Arc<Inner>,
}

struct Inner {
    settings: TwilioSettings,
    publisher: EventPublisher,
    metrics: Metrics,
    rest: TwilioRest,
    activity: Mutex<Activity>,
}

/// Timestamps and the last error, for the debug snapshot.
#[derive(Default, Clone)]
pub struct Activity {
    pub last_inbound_at: Option<DateTime<Utc>>,
    pub last_outbound_at: Option<DateTime<Utc>>,
    pub last_error: Option<(DateTime<Utc>, String)>,
}

impl Twilio {
    pub fn new(settings: TwilioSettings, publisher: EventPublisher, metrics: Metrics) -> Self {
        let rest = TwilioRest::new(&settings);
        Self {
            inner: Arc::new(Inner {
                settings,
                publisher,
                metrics,
                rest,
                activity: Mutex::new(Activity::default()),
            }),
        }
    }

    pub fn settings(&self) -> &TwilioSettings {
        &self.inner.settings
    }

    pub fn publisher(&self) -> &EventPublisher {
        &self.inner.publisher
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The Twilio REST client (one pooled HTTP client for the whole connector).
    pub fn rest(&self) -> &TwilioRest {
        &self.inner.rest
    }

    pub fn activity(&self) -> Activity {
        self.inner.activity.lock().expect("poisoned").clone()
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
