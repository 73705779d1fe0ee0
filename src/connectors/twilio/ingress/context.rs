//! What every Twilio webhook handler gets: the connector's shared state, the request verifier
//! and the auto-joiner Conversations events drive.

use std::ops::Deref;

use super::webhook::WebhookVerifier;
use crate::connectors::twilio::{egress::auto_join::AutoJoiner, shared::Twilio};

#[derive(Clone)]
pub struct IngressContext {
    twilio: Twilio,
    verifier: WebhookVerifier,
    auto_joiner: AutoJoiner,
}

impl IngressContext {
    pub fn new(twilio: Twilio, verifier: WebhookVerifier, auto_joiner: AutoJoiner) -> Self {
        Self {
            twilio,
            verifier,
            auto_joiner,
        }
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
