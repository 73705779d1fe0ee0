//! Auto-join: adds the bot (`TWILIO_IDENTITY`) to Conversations it is not yet part of, so it can
//! post replies as itself.
//!
//! Webhooks never wait for Twilio's REST API: [`AutoJoiner::ensure_joined`] starts a background
//! task and returns. The task retries failures with exponential backoff and jitter (honouring
//! `Retry-After`), so a failure is neither lost nor fails the webhook. "Already a participant"
//! (HTTP 409 / Twilio error 50433) counts as success. Successful joins are remembered, and at
//! most one task runs per conversation, so the bot is added to a conversation exactly once per
//! process however many webhooks announce it. With [`AutoJoiner::persisting_in`], each pending
//! join is also a file until it succeeds or is given up, and is resumed after a restart.
//!
//! With [`AutoJoiner::sharing`] the instances agree through the state store: the joined set is
//! kept there too, and a join starts only after claiming the conversation (set-if-absent with
//! an expiry, renewed before every attempt), so one instance joins and the others see it. A
//! claim whose holder died expires; the next announcement of the conversation joins it then.
//! When the store cannot answer the join goes ahead: joining twice is harmless ("already a
//! participant" counts as done).

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use moka::sync::Cache;

use crate::connectors::twilio::rest::{ParticipantAdded, TwilioRest};
use prometheus::IntCounterVec;

use crate::{backoff::Backoff, metrics::Metrics, state::StateStore};

/// How long the shared joined set remembers a conversation (a forgotten one costs one join
/// answered "already a participant").
const JOINED_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// How the join requests are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    /// Attempts for transient failures (network, 429, 5xx).
    pub max_attempts: u32,
    /// Attempts for other failures (4xx), which rarely heal by themselves.
    pub max_permanent_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
            max_attempts: 20,
            max_permanent_attempts: 3,
        }
    }
}

/// Keeps the bot a participant of every conversation Twilio tells us about.
#[derive(Clone)]
pub struct AutoJoiner {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Option<String>,
    rest: TwilioRest,
    policy: RetryPolicy,
    /// Conversations the bot is known to be part of.
    joined: Cache<String, ()>,
    /// Conversations a join task is running for.
    pending: Mutex<HashSet<String>>,
    /// Where pending joins are kept across restarts (one empty file per conversation).
    state_dir: Option<PathBuf>,
    /// The store the instances share the joined set and join claims through.
    shared: Option<Arc<dyn StateStore>>,
    /// `conversation_joins_total{outcome}`: joined, already_participant, retried, gave_up.
    joins: IntCounterVec,
}

impl AutoJoiner {
    /// `identity` is `TWILIO_IDENTITY` (`None` disables auto-join).
    pub fn new(identity: Option<String>, rest: TwilioRest, metrics: Metrics) -> Self {
        Self::with_policy(identity, rest, metrics, RetryPolicy::default())
    }

    pub fn with_policy(
        identity: Option<String>,
        rest: TwilioRest,
        metrics: Metrics,
        policy: RetryPolicy,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                identity,
                rest,
                policy,
                joined: Cache::builder().max_capacity(500_000).build(),
                pending: Mutex::new(HashSet::new()),
                state_dir: None,
                shared: None,
                joins: metrics.register_counter_vec(
                    "conversation_joins_total",
                    "Attempts to add the bot to a Twilio conversation, by outcome",
                    &["outcome"],
                ),
            }),
        }
    }

    /// Keeps pending joins in `dir` so a restart resumes them, and resumes those already there.
    /// Must be called before the joiner is shared.
    pub fn persisting_in(mut self, dir: PathBuf) -> Self {
        if self.inner.identity.is_none() {
            return self;
        }
        if let Err(error) = std::fs::create_dir_all(&dir) {
            tracing::error!(%error, dir = %dir.display(), "cannot keep pending conversation joins on disk");
            return self;
        }
        let leftovers: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|name| is_safe_file_name(name))
                    .collect()
            })
            .unwrap_or_default();
        Arc::get_mut(&mut self.inner)
            .expect("persisting_in is called before the joiner is shared")
            .state_dir = Some(dir);
        for conversation_sid in leftovers {
            tracing::info!(
                conversation_sid,
                "resuming a conversation join from before the restart"
            );
            self.ensure_joined(&conversation_sid);
        }
        self
    }

    /// Shares the joined set and join claims with other instances through `store`. Must be
    /// called before the joiner is shared (and before [`Self::persisting_in`] resumes joins).
    pub fn sharing(mut self, store: Arc<dyn StateStore>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("sharing is called before the joiner is shared")
            .shared = Some(store);
        self
    }

    fn joined_key(conversation_sid: &str) -> String {
        format!("twilio:joined:{conversation_sid}")
    }

    fn claim_key(conversation_sid: &str) -> String {
        format!("twilio:join-claim:{conversation_sid}")
    }

    /// How long a claim lasts without renewal: longer than any wait between two attempts.
    fn claim_ttl(&self) -> Duration {
        self.inner.policy.max + Duration::from_secs(60)
    }

    /// Whether this instance should join: not when another one has joined or is joining.
    async fn claim(&self, conversation_sid: &str) -> bool {
        let Some(store) = &self.inner.shared else {
            return true;
        };
        match store.get(&Self::joined_key(conversation_sid)).await {
            Ok(Some(_)) => {
                self.inner.joined.insert(conversation_sid.to_owned(), ());
                return false;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, conversation_sid, "shared joined set unavailable; joining anyway");
                return true;
            }
        }
        match store
            .put_if_absent(&Self::claim_key(conversation_sid), "1", self.claim_ttl())
            .await
        {
            Ok(won) => {
                if !won {
                    tracing::debug!(
                        conversation_sid,
                        "another instance is joining the conversation"
                    );
                }
                won
            }
            Err(error) => {
                tracing::warn!(%error, conversation_sid, "join claim unavailable; joining anyway");
                true
            }
        }
    }

    /// Lets another instance claim the conversation again (a successful join is in the
    /// joined set already, through [`Self::mark_joined`]).
    async fn release_claim(&self, conversation_sid: &str) {
        if let Some(store) = &self.inner.shared {
            let _ = store.remove(&Self::claim_key(conversation_sid)).await;
        }
    }

    fn remember_pending(&self, conversation_sid: &str) {
        let Some(dir) = &self.inner.state_dir else {
            return;
        };
        if !is_safe_file_name(conversation_sid) {
            return;
        }
        let path = dir.join(conversation_sid);
        let written = std::fs::File::create(&path)
            .and_then(|file| file.sync_all())
            .and_then(|()| std::fs::File::open(dir)?.sync_all());
        if let Err(error) = written {
            tracing::error!(%error, conversation_sid, "cannot record a pending conversation join");
        }
    }

    fn forget_pending(&self, conversation_sid: &str) {
        if let Some(dir) = &self.inner.state_dir {
            if is_safe_file_name(conversation_sid) {
                let _ = std::fs::remove_file(dir.join(conversation_sid));
            }
        }
    }

    /// The bot's identity; `None` disables auto-join.
    pub fn identity(&self) -> Option<&str> {
        self.inner.identity.as_deref()
    }

    /// Whether the bot is known to be a participant of `conversation_sid`.
    pub fn is_joined(&self, conversation_sid: &str) -> bool {
        self.inner.joined.contains_key(conversation_sid)
    }

    /// Records that the bot is a participant (it was added, or it posted there); the other
    /// instances learn it in the background.
    pub fn mark_joined(&self, conversation_sid: &str) {
        if self.is_joined(conversation_sid) {
            return;
        }
        self.inner.joined.insert(conversation_sid.to_owned(), ());
        if let Some(store) = self.inner.shared.clone() {
            let key = Self::joined_key(conversation_sid);
            tokio::spawn(async move {
                if let Err(error) = store.put(&key, "1", JOINED_TTL).await {
                    tracing::warn!(%error, "join not recorded in the shared joined set");
                }
            });
        }
    }

    /// Makes sure the bot joins `conversation_sid`: returns at once; a background task adds it
    /// unless it is known to be there or a task for it is already running.
    pub fn ensure_joined(&self, conversation_sid: &str) {
        let Some(identity) = self.inner.identity.clone() else {
            return;
        };
        {
            let mut pending = self.inner.pending.lock().expect("poisoned");
            if self.is_joined(conversation_sid) || !pending.insert(conversation_sid.to_owned()) {
                return;
            }
        }
        let joiner = self.clone();
        let conversation_sid = conversation_sid.to_owned();
        tokio::spawn(async move {
            if joiner.claim(&conversation_sid).await {
                joiner.remember_pending(&conversation_sid);
                joiner.join_with_retries(&conversation_sid, &identity).await;
                joiner.release_claim(&conversation_sid).await;
            }
            joiner.forget_pending(&conversation_sid);
            joiner
                .inner
                .pending
                .lock()
                .expect("poisoned")
                .remove(&conversation_sid);
        });
    }

    fn count(&self, outcome: &str) {
        self.inner.joins.with_label_values(&[outcome]).inc();
    }

    async fn join_with_retries(&self, conversation_sid: &str, identity: &str) {
        let policy = &self.inner.policy;
        let mut backoff = Backoff::new(policy.base, policy.max);
        let mut permanent_failures = 0u32;
        for attempt in 1..=policy.max_attempts {
            if attempt > 1 {
                if let Some(store) = &self.inner.shared {
                    // Still ours: renewed so the claim outlives the wait.
                    let _ = store
                        .put(&Self::claim_key(conversation_sid), "1", self.claim_ttl())
                        .await;
                }
            }
            let result = self
                .inner
                .rest
                .add_participant(conversation_sid, identity)
                .await;
            let (reason, retry_after) = match result {
                Ok(added) => {
                    // Remembered before the task leaves `pending`: no window for a second join.
                    self.mark_joined(conversation_sid);
                    let outcome = match added {
                        ParticipantAdded::Added { .. } => "joined",
                        ParticipantAdded::AlreadyParticipant => "already_participant",
                    };
                    self.count(outcome);
                    tracing::info!(conversation_sid, attempt, outcome, "bot is a participant");
                    return;
                }
                Err(error) if error.is_retryable() => (error.to_string(), error.retry_after()),
                Err(error) => {
                    permanent_failures += 1;
                    if permanent_failures >= policy.max_permanent_attempts {
                        self.give_up(conversation_sid, attempt, &error.to_string());
                        return;
                    }
                    (error.to_string(), None)
                }
            };
            if attempt == policy.max_attempts {
                self.give_up(conversation_sid, attempt, &reason);
                return;
            }
            let delay = retry_after
                .map(|after| after.min(policy.max))
                .unwrap_or_else(|| backoff.next_delay());
            self.count("retried");
            tracing::warn!(conversation_sid, attempt, %reason, ?delay, "joining the conversation failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn give_up(&self, conversation_sid: &str, attempts: u32, reason: &str) {
        self.count("gave_up");
        tracing::error!(
            conversation_sid,
            attempts,
            reason,
            "could not add the bot to the conversation; giving up until Twilio announces it again"
        );
    }
}

/// Conversation SIDs (or unique names) that are safe to use as a file name.
fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        configuration::{AppEnv, Environment},
        connectors::twilio::config::TwilioSettings,
    };

    fn joiner(identity: Option<&str>) -> AutoJoiner {
        let mut vars = vec![("TWILIO_CONVERSATIONS_BASE_URL", "http://127.0.0.1:9")];
        if let Some(identity) = identity {
            vars.push(("TWILIO_IDENTITY", identity));
        }
        let settings =
            TwilioSettings::from_environment(&Environment::from_pairs(vars), AppEnv::Development)
                .unwrap();
        AutoJoiner::new(
            settings.identity.clone(),
            TwilioRest::new(&settings),
            Metrics::new(),
        )
    }

    fn pending(joiner: &AutoJoiner) -> usize {
        joiner.inner.pending.lock().unwrap().len()
    }

    async fn settled(joiner: &AutoJoiner) {
        for _ in 0..200 {
            if pending(joiner) == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("the join task did not finish");
    }

    #[tokio::test]
    async fn instances_sharing_a_store_see_each_others_joins_and_claims() {
        let store: Arc<dyn StateStore> = Arc::new(crate::state::memory::MemoryStore::default());
        let first = joiner(Some("bot")).sharing(store.clone());
        let second = joiner(Some("bot")).sharing(store);

        first.mark_joined("CH1");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        second.ensure_joined("CH1");
        settled(&second).await;
        assert!(second.is_joined("CH1"), "learnt from the shared joined set");

        // Twilio is unreachable here, so the first instance keeps retrying while it holds
        // the claim; the second one sees the claim and does not start a join of its own.
        first.ensure_joined("CH2");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        second.ensure_joined("CH2");
        settled(&second).await;
        assert_eq!(pending(&first), 1, "the claim holder is still joining");
        assert!(!second.is_joined("CH2"));
    }

    #[tokio::test]
    async fn no_identity_means_no_join() {
        let joiner = joiner(None);
        joiner.ensure_joined("CH1");
        assert_eq!(pending(&joiner), 0);
    }

    #[tokio::test]
    async fn known_conversations_are_not_joined_again_and_one_task_runs_per_conversation() {
        let joiner = joiner(Some("bot"));
        joiner.mark_joined("CH1");
        joiner.ensure_joined("CH1");
        assert_eq!(pending(&joiner), 0);
        assert!(joiner.is_joined("CH1"));

        joiner.ensure_joined("CH2");
        joiner.ensure_joined("CH2");
        assert_eq!(pending(&joiner), 1);
        assert!(!joiner.is_joined("CH2"));
    }
}
