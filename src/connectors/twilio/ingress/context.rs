//! What every Twilio webhook handler gets: the connector's shared state, the request verifier,
//! the auto-joiner Conversations events drive, the send ledger status callbacks complete, and
//! the opt-out memory inbound keywords update.

use std::ops::Deref;

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
}

impl IngressContext {
    pub fn new(
        twilio: Twilio,
        verifier: WebhookVerifier,
        auto_joiner: AutoJoiner,
        ledger: SendLedger,
        opt_outs: OptOuts,
    ) -> Self {
        Self {
            twilio,
            verifier,
            auto_joiner,
            ledger,
            opt_outs,
        }
    }

    pub fn ledger(&self) -> &SendLedger {
        &self.ledger
    }

    pub fn opt_outs(&self) -> &OptOuts {
        &self.opt_outs
    }

    pub fn verifier(&self) -> &WebhookVerifier {
        &self.verifier
    }

    /// Adds the bot to Conversations it is not part of yet.
    pub fn auto_joiner(&self) -> &AutoJoiner {
        &self.auto_joiner
    }
}

/// Handlers reach the shared state (settings, publisher, metrics, activity) directly.
impl Deref for IngressContext {
    type Target = Twilio;

    fn deref(&self) -> &Twilio {
        &self.twilio
    }
}
