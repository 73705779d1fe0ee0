//! The send ledger: what became of each part of each egress event, so a part is sent at most
//! once in effect although the platforms have no request idempotency.
//!
//! Before a part is sent its intent is recorded ([`PartRecord::Pending`], with the time of the
//! first attempt whose outcome is unknown); after the platform's answer, what it created
//! ([`PartRecord::Sent`]). A retried or redelivered part whose record says `Sent` is not sent
//! again; one whose record says `Pending` (a timeout, a 5xx, a crash between send and record)
//! is first looked for at the platform ([`super::sink::EgressSink::resolve`]). Anything else
//! (a definite refusal) clears the record.
//!
//! Parts are keyed by their part key (the event's identity and the part's place in it), which
//! is the same on every attempt and every redelivery. Records live in a [`StateStore`] for
//! [`LEDGER_TTL`]: long after any redelivery or retry could come.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::state::{StateStore, StoreError};

/// How long a part's record is kept.
pub const LEDGER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the ledger knows about one part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "state",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum PartRecord {
    /// An attempt was made whose outcome is unknown; the earliest such attempt started `since`.
    Pending { since: DateTime<Utc> },
    /// The platform created it.
    Sent {
        provider_sid: String,
        /// How we learnt it when not from the platform's answer (e.g. `status_callback`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resolved_by: Option<String>,
    },
}

#[derive(Clone)]
pub struct SendLedger {
    store: Arc<dyn StateStore>,
}

impl SendLedger {
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self { store }
    }

    fn key(part_key: &str) -> String {
        format!("ledger:{part_key}")
    }

    pub async fn get(&self, part_key: &str) -> Result<Option<PartRecord>, StoreError> {
        match self.store.get(&Self::key(part_key)).await? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("ledger record {part_key}: {e}"))),
        }
    }

    /// Records an attempt about to be made, keeping the earliest unresolved one (and a `Sent`
    /// record): one atomic set-if-absent.
    pub async fn pending(&self, part_key: &str, since: DateTime<Utc>) -> Result<(), StoreError> {
        let text = serde_json::to_string(&PartRecord::Pending { since })
            .expect("ledger records serialise");
        self.store
            .put_if_absent(&Self::key(part_key), &text, LEDGER_TTL)
            .await
            .map(|_| ())
    }

    pub async fn sent(
        &self,
        part_key: &str,
        provider_sid: &str,
        resolved_by: Option<&str>,
    ) -> Result<(), StoreError> {
        self.put(
            part_key,
            &PartRecord::Sent {
                provider_sid: provider_sid.to_owned(),
                resolved_by: resolved_by.map(str::to_owned),
            },
        )
        .await
    }

    /// The platform refused the attempt: nothing was created.
    pub async fn clear(&self, part_key: &str) -> Result<(), StoreError> {
        self.store.remove(&Self::key(part_key)).await
    }

    async fn put(&self, part_key: &str, record: &PartRecord) -> Result<(), StoreError> {
        let text = serde_json::to_string(record).expect("ledger records serialise");
        self.store
            .put(&Self::key(part_key), &text, LEDGER_TTL)
            .await
    }

    /// Where the records live (`file`, `memory`, …).
    pub fn store_kind(&self) -> &'static str {
        self.store.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::memory::MemoryStore;

    #[tokio::test]
    async fn a_part_goes_from_pending_to_sent_and_keeps_its_first_attempt_time() {
        let ledger = SendLedger::new(Arc::new(MemoryStore::default()));
        let first = Utc::now() - chrono::TimeDelta::seconds(30);
        ledger.pending("p", first).await.unwrap();
        ledger.pending("p", Utc::now()).await.unwrap();
        assert_eq!(
            ledger.get("p").await.unwrap(),
            Some(PartRecord::Pending { since: first })
        );
        ledger.sent("p", "SM1", Some("listing")).await.unwrap();
        ledger.pending("p", Utc::now()).await.unwrap();
        assert_eq!(
            ledger.get("p").await.unwrap(),
            Some(PartRecord::Sent {
                provider_sid: "SM1".into(),
                resolved_by: Some("listing".into())
            })
        );
        ledger.clear("p").await.unwrap();
        assert_eq!(ledger.get("p").await.unwrap(), None);
    }
}
