//! What every Twilio webhook handler gets: the connector's shared state, the request verifier,
//! the auto-joiner Conversations events drive, the send ledger status callbacks complete, the
//! opt-out memory inbound keywords update, and the ingress wing's own metrics.

use std::ops::Deref;

use prometheus::{Histogram, IntCounterVec};

use super::webhook::WebhookVerifier;
use crate::{
    connectors::twilio::{egress::auto_join::AutoJoiner, opt_out::OptOuts, shared::Twilio},
    egress::ledger::SendLedger,
};

#[derive(Clone)]
pub struct IngressContext {
    twilio: Twilio,
    verifier: WebhookVerifier,
    auto_joiner: AutoJoiner,
    ledger: SendLedger,
    opt_outs: OptOuts,
    event_streams_concurrency: Histogram,
    media_lookups: IntCounterVec,
}

impl IngressContext {
    pub fn new(
        twilio: Twilio,
        verifier: WebhookVerifier,
        auto_joiner: AutoJoiner,
        ledger: SendLedger,
        opt_outs: OptOuts,
    ) -> Self {
        let metrics = twilio.metrics();
        let event_streams_concurrency = metrics.register_histogram(
            "twilio_event_streams_batch_concurrency",
            "Most events of one Twilio Event Streams batch in progress at once",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
        );
        let media_lookups = metrics.register_counter_vec(
            "twilio_media_lookups_total",
            "REST lookups of the media of an MMS that arrived without media URLs, by outcome \
             (listed, retry, unavailable)",
            &["outcome"],
        );
        Self {
            twilio,
            verifier,
            auto_joiner,
            ledger,
            opt_outs,
            event_streams_concurrency,
            media_lookups,
        }
    }

    pub fn verifier(&self) -> &WebhookVerifier {
        &self.verifier
    }

    /// Adds the bot to Conversations it is not part of yet.
    pub fn auto_joiner(&self) -> &AutoJoiner {
        &self.auto_joiner
    }

    pub fn ledger(&self) -> &SendLedger {
        &self.ledger
    }

    pub fn opt_outs(&self) -> &OptOuts {
        &self.opt_outs
    }

    /// The most events of one Event Streams batch in progress at once, per batch.
    pub fn event_streams_concurrency(&self) -> &Histogram {
        &self.event_streams_concurrency
    }

    /// Media list lookups by outcome.
    pub fn media_lookups(&self) -> &IntCounterVec {
        &self.media_lookups
    }
}

/// Handlers reach the shared state (settings, publisher, metrics, activity) directly.
impl Deref for IngressContext {
    type Target = Twilio;

    fn deref(&self) -> &Twilio {
        &self.twilio
    }
}
