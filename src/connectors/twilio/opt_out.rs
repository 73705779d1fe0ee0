//! Recipients who opted out of a sender (they replied STOP, or Twilio refused a send with error
//! 21610). Sends from that sender to them are dead-lettered without calling Twilio until they
//! opt in again (START, YES or UNSTOP). Kept in the state store, so every instance and every
//! restart sees the same list.
//!
//! A sender is what the egress sink rate-limits (`from:<number>` or `service:<MG…>`); an inbound
//! keyword is recorded for both the number it reached and its Messaging Service, since Twilio
//! applies opt-outs per service when the number belongs to one.

use std::{sync::Arc, time::Duration};

use crate::state::{StateStore, StoreError};

/// Opt-outs last until the recipient opts in again; the expiry only bounds forgotten entries.
const OPT_OUT_TTL: Duration = Duration::from_secs(3 * 365 * 24 * 3600);

/// Twilio's default opt-out keywords (the whole message, any case).
const OPT_OUT_KEYWORDS: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
];
/// Twilio's default opt-in keywords.
const OPT_IN_KEYWORDS: &[&str] = &["START", "YES", "UNSTOP"];

/// What an inbound message body says about the sender's consent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyword {
    OptOut,
    OptIn,
}

impl Keyword {
    pub fn of(body: &str) -> Option<Self> {
        let word = body
            .trim()
            .trim_end_matches(['.', '!'])
            .to_ascii_uppercase();
        if OPT_OUT_KEYWORDS.contains(&word.as_str()) {
            Some(Keyword::OptOut)
        } else if OPT_IN_KEYWORDS.contains(&word.as_str()) {
            Some(Keyword::OptIn)
        } else {
            None
        }
    }
}

/// The sender keys an inbound message to `to` (through `messaging_service_sid`) stands for.
pub fn senders_reached(to: &str, messaging_service_sid: Option<&str>) -> Vec<String> {
    let mut senders = vec![format!("from:{to}")];
    if let Some(service) = messaging_service_sid {
        senders.push(format!("service:{service}"));
    }
    senders
}

#[derive(Clone)]
pub struct OptOuts {
    store: Arc<dyn StateStore>,
}

impl OptOuts {
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self { store }
    }

    fn key(sender: &str, recipient: &str) -> String {
        format!("optout:{sender}|{recipient}")
    }

    pub async fn is_opted_out(&self, sender: &str, recipient: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .get(&Self::key(sender, recipient))
            .await?
            .is_some())
    }

    pub async fn opt_out(&self, sender: &str, recipient: &str) -> Result<(), StoreError> {
        self.store
            .put(&Self::key(sender, recipient), "1", OPT_OUT_TTL)
            .await
    }

    pub async fn opt_in(&self, sender: &str, recipient: &str) -> Result<(), StoreError> {
        self.store.remove(&Self::key(sender, recipient)).await
    }

    /// Applies an inbound keyword from `recipient` to every sender it reached.
    pub async fn apply(
        &self,
        keyword: Keyword,
        senders: &[String],
        recipient: &str,
    ) -> Result<(), StoreError> {
        for sender in senders {
            match keyword {
                Keyword::OptOut => self.opt_out(sender, recipient).await?,
                Keyword::OptIn => self.opt_in(sender, recipient).await?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::memory::MemoryStore;

    #[test]
    fn keywords_are_whole_messages_in_any_case() {
        assert_eq!(Keyword::of("stop"), Some(Keyword::OptOut));
        assert_eq!(Keyword::of("  Unsubscribe. "), Some(Keyword::OptOut));
        assert_eq!(Keyword::of("START"), Some(Keyword::OptIn));
        assert_eq!(Keyword::of("unstop"), Some(Keyword::OptIn));
        assert_eq!(Keyword::of("please stop"), None);
        assert_eq!(Keyword::of("yesterday"), None);
    }

    #[tokio::test]
    async fn an_opt_out_lasts_until_the_recipient_opts_in() {
        let opt_outs = OptOuts::new(Arc::new(MemoryStore::default()));
        let senders = senders_reached("+15005550006", Some("MG1"));
        opt_outs
            .apply(Keyword::OptOut, &senders, "+14155550100")
            .await
            .unwrap();
        assert!(opt_outs
            .is_opted_out("from:+15005550006", "+14155550100")
            .await
            .unwrap());
        assert!(opt_outs
            .is_opted_out("service:MG1", "+14155550100")
            .await
            .unwrap());
        assert!(!opt_outs
            .is_opted_out("from:+15005550006", "+14155550101")
            .await
            .unwrap());
        opt_outs
            .apply(Keyword::OptIn, &senders, "+14155550100")
            .await
            .unwrap();
        assert!(!opt_outs
            .is_opted_out("service:MG1", "+14155550100")
            .await
            .unwrap());
    }
}
