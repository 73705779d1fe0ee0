//! The connector-neutral sink: what the egress engine asks of a platform (validate a target,
//! cut text into parts, send one part) and the types it exchanges.
//!
//! A second platform is a new [`EgressSink`] implementation handed to the engine; the loop,
//! selection, ordering, rate limiting, retries and outcome events stay as they are. Sinks are
//! `dyn` objects: the engine holds one per connector and routes each event to the sink named by
//! its `egress.connector`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::envelope::Media;

/// One part of an egress event, ready to send.
#[derive(Clone, Copy, Debug)]
pub struct Outbound<'a> {
    pub correlation_id: Uuid,
    /// The recipient: what [`EgressSink::check_target`] accepted.
    pub target: &'a str,
    /// `egress.metadata` of the event (platform-specific hints such as the sender).
    pub egress_metadata: &'a Map<String, Value>,
    pub text: Option<&'a str>,
    pub media: &'a [Media],
    /// 0-based index of this part, and how many parts the event has.
    pub part_index: usize,
    pub part_count: usize,
    /// Identical on every attempt (and every redelivery) of this part of this event.
    pub idempotency_token: &'a str,
}

/// The platform accepted the part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The platform's id for what it created.
    pub provider_sid: Option<String>,
}

/// The platform refused the part or could not be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendFailure {
    /// Worth another attempt (rate limited, server error, network).
    pub retryable: bool,
    /// The platform may have created the part anyway (a timeout or a server error after the
    /// request left): before another attempt, [`EgressSink::resolve`] looks for it.
    pub ambiguous: bool,
    /// The recipient has opted out: terminal, reported as `opted_out`.
    pub opted_out: bool,
    /// The platform asked us to wait at least this long.
    pub retry_after: Option<Duration>,
    pub http_status: Option<u16>,
    /// The platform's error code.
    pub error_code: Option<u32>,
    /// Dead-letter reason when this failure is terminal, e.g. `provider_rejected`.
    pub reason: &'static str,
    /// Human-readable detail; never a secret or message content.
    pub message: String,
}

/// What the platform says about earlier attempts of a part whose outcome is unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// One of them created it.
    Found {
        provider_sid: String,
        /// How it was found (`attributes`, `status_callback`, `listing`, …), for the status event.
        how: &'static str,
    },
    /// None did: sending again is safe.
    NotFound,
}

/// A recipient address the sink cannot send to; the text goes into the dead letter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidTarget(pub String);

/// Size facts about one part's text, reported in status events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TextInfo {
    /// Unicode scalar values.
    pub characters: usize,
    /// The encoding the platform will use, when it matters (SMS: `GSM-7` or `UCS-2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
    /// Billing units (SMS segments; 0 for an empty body, 1 per part where there are none).
    pub segments: u32,
}

/// How hard the engine may push a sink.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SinkPolicy {
    /// Attempts per part, including the first.
    pub max_attempts: u32,
    /// Sends per second per sender (see [`EgressSink::sender_key`]).
    pub max_send_rate: f64,
    /// Sends a sender may make back to back before the rate applies.
    pub burst: u32,
}

impl Default for SinkPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            max_send_rate: 1.0,
            burst: 1,
        }
    }
}

/// A platform that egress events can be delivered to.
pub trait EgressSink: Send + Sync + 'static {
    /// `egress.connector` value this sink serves.
    fn connector(&self) -> &'static str;

    /// Retry and rate limits for this platform.
    fn policy(&self) -> SinkPolicy;

    /// Accepts or refuses a recipient address.
    fn check_target(&self, target: &str) -> Result<(), InvalidTarget>;

    /// Cuts `text` into the parts one message to `target` can carry, in order.
    fn split_text(&self, target: &str, text: &str) -> Vec<String>;

    /// Size facts about one part's text (may be empty for a media-only part).
    fn describe_text(&self, text: &str) -> TextInfo;

    /// How many media items one part may carry (extra media go into further parts).
    fn max_media_per_part(&self, target: &str) -> usize;

    /// Whether `text` and `media` fit in one message to `target` (some platforms count media
    /// against the text's limit); when not, the media go in a part of their own.
    fn fits(&self, target: &str, text: Option<&str>, media: &[Media]) -> bool {
        let _ = (target, text, media);
        true
    }

    /// The sender whose throughput the rate limiter protects for this recipient.
    fn sender_key(&self, target: &str, egress_metadata: &Map<String, Value>) -> String;

    /// Sends one part, once. The engine handles retries, ordering and rate limiting.
    fn send<'a>(&'a self, part: Outbound<'a>) -> BoxFuture<'a, Result<Accepted, SendFailure>>;

    /// Looks for `part` as created by an attempt made at or after `since` whose answer was
    /// lost (see [`SendFailure::ambiguous`]). A sink that cannot look says `NotFound`, which
    /// makes the engine send again (at least once instead of at most once).
    fn resolve<'a>(
        &'a self,
        part: Outbound<'a>,
        since: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Resolution, SendFailure>> {
        let _ = (part, since);
        Box::pin(async { Ok(Resolution::NotFound) })
    }
}
