//! What the client's handle and its engine share: the configuration, the per-conversation
//! view the snapshot and commits read, the checkpoint store and the counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use url::Url;

use super::checkpoint::CheckpointStore;
use super::conversations::{Configuration, ConversationsApi};
use super::options::Config;
use super::session::SessionHandle;

/// Counters on top of the session's.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub messages_emitted: AtomicU64,
    pub own_messages_skipped: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub malformed_messages: AtomicU64,
    pub catchups: AtomicU64,
    pub joins: AtomicU64,
    pub join_failures: AtomicU64,
    pub leaves: AtomicU64,
    pub checkpoint_write_errors: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ConversationStatus {
    Joined,
    NotParticipating,
    Joining,
    JoinFailed { reason: String },
}

#[derive(Debug, Clone)]
pub(super) struct ConversationView {
    pub(super) status: ConversationStatus,
    pub(super) items_url: Option<Url>,
    /// Highest index handed to the consumer by this process.
    pub(super) emitted: Option<u64>,
    /// The checkpoint: highest index published (or skipped with nothing outstanding).
    pub(super) committed: Option<u64>,
    /// Highest skipped (own/malformed) index above `emitted`, waiting for the commits
    /// before it.
    pub(super) skipped: Option<u64>,
    pub(super) catching_up: bool,
}

impl ConversationView {
    pub(super) fn new(status: ConversationStatus, committed: Option<u64>) -> Self {
        Self {
            status,
            items_url: None,
            emitted: None,
            committed,
            skipped: None,
            catching_up: false,
        }
    }

    pub(super) fn nothing_outstanding(&self) -> bool {
        match (self.emitted, self.committed) {
            (None, _) => true,
            (Some(emitted), Some(committed)) => committed >= emitted,
            (Some(_), None) => false,
        }
    }
}

#[derive(Default)]
pub(super) struct Shared {
    pub(super) conversations: BTreeMap<String, ConversationView>,
    pub(super) participant_limit_reached: Option<String>,
}

pub(super) struct Inner {
    pub(super) config: Config,
    pub(super) shared: Mutex<Shared>,
    pub(super) store: Arc<dyn CheckpointStore>,
    pub(super) flush: Notify,
    pub(super) api: ConversationsApi,
    pub(super) configuration: watch::Receiver<Option<Arc<Configuration>>>,
    pub(super) session: SessionHandle,
    pub(super) stats: ClientStats,
    pub(super) tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    pub(super) fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // Every critical section leaves the maps consistent, so a poisoned lock is usable.
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn store_checkpoint(&self, conversation_sid: &str, index: u64) {
        self.store.set(conversation_sid, index);
        self.flush.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outstanding_commits() {
        let mut view = ConversationView::new(ConversationStatus::Joined, None);
        assert!(view.nothing_outstanding());
        view.emitted = Some(3);
        assert!(!view.nothing_outstanding());
        view.committed = Some(2);
        assert!(!view.nothing_outstanding());
        view.committed = Some(3);
        assert!(view.nothing_outstanding());
    }
}
