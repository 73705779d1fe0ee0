//! The facade the service uses: [`Client::start`] connects, syncs the identity's
//! conversations, joins the ones it was invited to and emits every new message of its
//! conversations exactly once (see [`super::engine`]); [`ClientHandle`] commits what was
//! published, sends, resolves ambiguous sends and reports state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use super::checkpoint::{CheckpointError, CheckpointStore};
use super::conversations::{Configuration, ConversationsApi, Direction, MessageAdded, SentMessage};
use super::engine::Engine;
use super::options::{client_error, ClientError, Config};
use super::session::{self, SessionConfig, SessionStats, TransportState};
use super::state::{bump, ClientStats, ConversationStatus, ConversationView, Inner, Shared};
use super::sync::SyncApi;
use super::token::TokenSource;
use super::upstream::Upstream;

pub struct Client;

impl Client {
    /// Starts the socket, the sync engine and the checkpoint writer; must run inside a tokio
    /// runtime. Messages arrive on the returned receiver; call
    /// [`ClientHandle::commit`] once each is safely published.
    pub fn start(
        config: Config,
        store: Arc<dyn CheckpointStore>,
        cancel: CancellationToken,
    ) -> Result<(mpsc::Receiver<MessageAdded>, ClientHandle), ClientError> {
        let spec = config.token_spec();
        // Fails early on empty credentials instead of in a reconnect loop.
        spec.mint()?;
        let aim_base = config.host_base("aim")?;
        let cds_base = config.host_base("cds")?;
        let tuning = config.tuning.clone();
        let mut session_config = SessionConfig::new(config.twilsock_url.clone());
        session_config.reconnect_base = tuning.reconnect_base;
        session_config.reconnect_max = tuning.reconnect_max;
        session_config.keepalive = tuning.keepalive;
        let (session, session_events, session_task) =
            session::spawn(session_config, Arc::new(spec), cancel.clone());
        let upstream = Upstream::new(
            session.clone(),
            tuning.request_timeout,
            tuning.retry.clone(),
            cancel.clone(),
        );
        let api = ConversationsApi::new(upstream.clone(), SyncApi::new(upstream, cds_base));
        let (configuration_tx, configuration) = watch::channel(None);
        let shared = Shared::default();
        let inner = Arc::new(Inner {
            config,
            shared: Mutex::new(shared),
            store,
            flush: Notify::new(),
            api,
            configuration,
            session,
            stats: ClientStats::default(),
            tasks: Mutex::new(Vec::new()),
        });
        let (events_tx, events_rx) = mpsc::channel(tuning.events_buffer.max(1));
        let engine = Engine::new(
            inner.clone(),
            cancel.clone(),
            events_tx,
            session_events,
            configuration_tx,
            aim_base,
        );
        let engine_task = tokio::spawn(engine.run());
        let flusher_task = tokio::spawn(flusher(inner.clone(), cancel));
        if let Ok(mut tasks) = inner.tasks.lock() {
            tasks.extend([session_task, engine_task, flusher_task]);
        }
        Ok((events_rx, ClientHandle { inner }))
    }
}

/// Writes checkpoints after commits; one write covers every commit since the last.
async fn flusher(inner: Arc<Inner>, cancel: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = inner.flush.notified() => false,
        };
        let writer = inner.clone();
        let result = tokio::task::spawn_blocking(move || writer.store.flush()).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                bump(&inner.stats.checkpoint_write_errors);
                tracing::error!(%error, "checkpoint write failed");
            }
            Err(error) => tracing::error!(%error, "checkpoint writer panicked"),
        }
        if stopping {
            return;
        }
    }
}

/// Cheap to clone.
#[derive(Clone)]
pub struct ClientHandle {
    inner: Arc<Inner>,
}

impl ClientHandle {
    /// Records that the message at `index` was published; the checkpoint follows.
    pub fn commit(&self, conversation_sid: &str, index: u64) {
        let mut shared = self.inner.shared();
        let view = shared
            .conversations
            .entry(conversation_sid.to_owned())
            .or_insert_with(|| ConversationView::new(ConversationStatus::Joined, None));
        let mut committed = view.committed.map_or(index, |c| c.max(index));
        view.committed = Some(committed);
        if view.nothing_outstanding() {
            if let Some(skipped) = view.skipped.take() {
                committed = committed.max(skipped);
                view.committed = Some(committed);
            }
        }
        drop(shared);
        self.inner.store_checkpoint(conversation_sid, committed);
    }

    /// Writes pending checkpoints now.
    pub async fn flush_checkpoints(&self) -> Result<(), CheckpointError> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || inner.store.flush()).await {
            Ok(result) => result,
            Err(error) => Err(CheckpointError::Io {
                path: std::path::PathBuf::new(),
                source: std::io::Error::other(error.to_string()),
            }),
        }
    }

    pub fn state(&self) -> watch::Receiver<TransportState> {
        self.inner.session.state()
    }

    pub fn session_stats(&self) -> &Arc<SessionStats> {
        self.inner.session.stats()
    }

    pub fn stats(&self) -> &ClientStats {
        &self.inner.stats
    }

    async fn configuration(&self) -> Result<Arc<Configuration>, ClientError> {
        let mut receiver = self.inner.configuration.clone();
        let wait = self.inner.config.tuning.request_timeout;
        let ready = tokio::time::timeout(wait, receiver.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(configuration)) => configuration
                .clone()
                .ok_or(ClientError::NotReady("configuration")),
            _ => Err(ClientError::NotReady("configuration")),
        }
    }

    /// Posts a message (joining first if needed). `attributes` (JSON text) should carry
    /// `{"origin":"ingress-egress","key":…}` so an ambiguous attempt can be resolved.
    pub async fn send_message(
        &self,
        conversation_sid: &str,
        body: &str,
        attributes: &str,
    ) -> Result<SentMessage, ClientError> {
        let configuration = self.configuration().await?;
        let joined = matches!(
            self.inner
                .shared()
                .conversations
                .get(conversation_sid)
                .map(|view| &view.status),
            Some(ConversationStatus::Joined)
        );
        if !joined {
            self.inner
                .api
                .join(
                    &configuration,
                    conversation_sid,
                    &self.inner.config.identity,
                )
                .await
                .map_err(client_error)?;
        }
        self.inner
            .api
            .send_message(&configuration, conversation_sid, body, attributes)
            .await
            .map_err(client_error)
    }

    /// Looks through the conversation's latest messages for one whose `Attributes.key` is
    /// `key`.
    pub async fn find_message_by_key(
        &self,
        conversation_sid: &str,
        key: &str,
    ) -> Result<Option<SentMessage>, ClientError> {
        let items_url = self
            .inner
            .shared()
            .conversations
            .get(conversation_sid)
            .and_then(|view| view.items_url.clone())
            .ok_or_else(|| ClientError::UnknownConversation(conversation_sid.to_owned()))?;
        let (items, _) = self
            .inner
            .api
            .messages_page(
                &items_url,
                None,
                Direction::Backward,
                self.inner.config.tuning.find_lookback,
            )
            .await?;
        Ok(items.iter().rev().find_map(|item| {
            let data = &item.data;
            let attributes: Value = match data.get("attributes")? {
                Value::String(text) => serde_json::from_str(text).ok()?,
                other => other.clone(),
            };
            (attributes.get("key")?.as_str()? == key).then(|| SentMessage {
                sid: data
                    .get("sid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                index: item.index.unwrap_or_default(),
            })
        }))
    }

    /// Counters of the client on top of the session's, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let stats = &self.inner.stats;
        let session = self.inner.session.stats();
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        vec![
            ("reconnects", get(&session.reconnects)),
            ("framesIn", get(&session.frames_in)),
            ("framesOut", get(&session.frames_out)),
            ("malformedFrames", get(&session.malformed_frames)),
            ("upstreamRequests", get(&session.upstream_requests)),
            ("upstreamErrors", get(&session.upstream_errors)),
            ("notifications", get(&session.notifications)),
            ("tokenRenewals", get(&session.token_renewals)),
            ("messagesEmitted", get(&stats.messages_emitted)),
            ("ownMessagesSkipped", get(&stats.own_messages_skipped)),
            ("duplicatesDropped", get(&stats.duplicates_dropped)),
            ("malformedMessages", get(&stats.malformed_messages)),
            ("catchups", get(&stats.catchups)),
            ("joins", get(&stats.joins)),
            ("joinFailures", get(&stats.join_failures)),
            ("leaves", get(&stats.leaves)),
            ("checkpointWriteErrors", get(&stats.checkpoint_write_errors)),
        ]
    }

    /// How many conversations are in each status (`joined`, `not_participating`, `joining`,
    /// `join_failed`).
    pub fn conversation_counts(&self) -> [(&'static str, usize); 4] {
        let mut counts = [
            ("joined", 0),
            ("not_participating", 0),
            ("joining", 0),
            ("join_failed", 0),
        ];
        for view in self.inner.shared().conversations.values() {
            let slot = match view.status {
                ConversationStatus::Joined => 0,
                ConversationStatus::NotParticipating => 1,
                ConversationStatus::Joining => 2,
                ConversationStatus::JoinFailed { .. } => 3,
            };
            counts[slot].1 += 1;
        }
        counts
    }

    /// Why the identity cannot join more conversations, while that is so.
    pub fn participant_limit_reached(&self) -> Option<String> {
        self.inner.shared().participant_limit_reached.clone()
    }

    /// Unix seconds at which the current token expires (`None` before the first one).
    pub fn token_expires_at(&self) -> Option<u64> {
        let expires = self
            .inner
            .session
            .stats()
            .token_expires_at
            .load(Ordering::Relaxed);
        (expires > 0).then_some(expires)
    }

    /// State for the debug snapshot; never the token or a secret, nor message content.
    pub fn snapshot(&self) -> Value {
        let connection = self.inner.session.state().borrow().clone();
        let counters: serde_json::Map<String, Value> = self
            .counters()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.into()))
            .collect();
        let joined = self.conversation_counts()[0].1;
        let shared = self.inner.shared();
        let conversations: Vec<Value> = shared
            .conversations
            .iter()
            .map(|(sid, view)| {
                let (status, reason) = match &view.status {
                    ConversationStatus::Joined => ("joined", None),
                    ConversationStatus::NotParticipating => ("not_participating", None),
                    ConversationStatus::Joining => ("joining", None),
                    ConversationStatus::JoinFailed { reason } => ("join_failed", Some(reason)),
                };
                json!({
                    "sid": sid,
                    "status": status,
                    "reason": reason,
                    "checkpoint": view.committed,
                    "lastEmitted": view.emitted,
                    "catchingUp": view.catching_up,
                })
            })
            .collect();
        let token_expires_at = self.token_expires_at().and_then(|at| {
            chrono::DateTime::from_timestamp(i64::try_from(at).ok()?, 0).map(|at| at.to_rfc3339())
        });
        json!({
            "connection": connection,
            "identity": self.inner.config.identity,
            "tokenExpiresAt": token_expires_at,
            "configurationLoaded": self.inner.configuration.borrow().is_some(),
            "joined": joined,
            "participantLimit": self.inner.config.tuning.participant_limit,
            "participantLimitReached": shared.participant_limit_reached,
            "conversations": conversations,
            "counters": counters,
        })
    }

    /// Waits until every task has ended (after the cancellation token fired).
    pub async fn stopped(&self) {
        let tasks: Vec<_> = match self.inner.tasks.lock() {
            Ok(mut tasks) => tasks.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for task in tasks {
            let _ = task.await;
        }
    }
}
