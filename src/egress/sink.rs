//! The connector-neutral sink: what the egress engine asks of a platform (validate a target,
//! say how long a part may be, send one part idempotently) and the types it exchanges.
//!
//! A second platform is a new [`EgressSink`] implementation; the loop, selection, splitting,
//! ordering, rate limiting, retries and outcome events stay as they are.

use std::{future::Future, time::Duration};

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
    /// The platform's id for what it created (Twilio: `SM…`, `MM…`, `IM…`).
    pub provider_sid: Option<String>,
    /// The platform's own segment count, when it reports one.
    pub provider_segments: Option<u32>,
}

/// The platform refused the part or could not be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendFailure {
    /// Worth another attempt (rate limited, server error, network).
    pub retryable: bool,
    /// The recipient has opted out (Twilio 21610): terminal, reported as `opted_out`.
    pub opted_out: bool,
    /// The platform asked us to wait at least this long.
    pub retry_after: Option<Duration>,
    pub http_status: Option<u16>,
    /// The platform's error code (Twilio: 21211, 21610, …).
    pub error_code: Option<u32>,
    /// Dead-letter reason when this failure is terminal, e.g. `provider_rejected`.
    pub reason: &'static str,
    /// Human-readable detail; never a secret or message content.
    pub message: String,
}

/// What happened to one attempt or one event, for the sink's own metrics and snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Retried,
    Failed,
    DeadLettered,
    OptedOut,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Retried => "retried",
            Outcome::Failed => "failed",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::OptedOut => "opted_out",
        }
    }
}

/// A platform that egress events can be delivered to.
pub trait EgressSink: Send + Sync + 'static {
    /// `egress.connector` value this sink serves, e.g. `twilio`.
    fn connector(&self) -> &'static str;

    /// Accepts or refuses a recipient address (the refusal text goes into the dead letter).
    fn check_target(&self, target: &str) -> Result<(), String>;

    /// Longest text one part may carry, in UTF-16 code units.
    fn max_text_units(&self, target: &str) -> usize;

    /// How many media items one part may carry (extra media go into further parts).
    fn max_media_per_part(&self, target: &str) -> usize;

    /// The sender whose throughput the rate limiter protects for this recipient.
    fn sender_key(&self, target: &str, egress_metadata: &Map<String, Value>) -> String;

    /// Sends one part, once. The engine handles retries, ordering and rate limiting.
    fn send<'a>(
        &'a self,
        part: Outbound<'a>,
    ) -> impl Future<Output = Result<Accepted, SendFailure>> + Send + 'a;

    /// Notes an outcome (metrics, debug snapshot). `error_code` is the platform's code.
    fn observe(&self, outcome: Outcome, error_code: Option<u32>) {
        let _ = (outcome, error_code);
    }
}
