//! The sync engine: one task that owns the conversations map, the message lists and their
//! subscriptions, and turns Sync events and history pages into [`MessageAdded`]s in index
//! order per conversation.
//!
//! How "exactly once" holds:
//! - per conversation the engine keeps the next index it will emit; anything below it is a
//!   duplicate (replayed event, history page overlapping a live event) and is dropped, as is a
//!   message SID seen recently;
//! - a live event that skips ahead means something was missed, so the conversation switches
//!   to catch-up: history pages from the next index, live events buffered meanwhile;
//! - every (re)connect re-establishes the Sync subscriptions and pages history from the next
//!   index of every conversation; a restart starts from the persisted checkpoint;
//! - the checkpoint moves only when the consumer commits what it published (and over the
//!   bot's own messages, once everything before them is committed).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::conversations::{
    Configuration, ConversationListed, ConversationsError, Direction, JoinOutcome, Membership,
    MessageAdded,
};
use super::options::{ClientError, Tuning};
use super::session::{SessionEvent, TransportState};
use super::state::{bump, ConversationStatus, ConversationView, Inner};
use super::sync::{
    Change, Item, ItemKey, ObjectType, SubscribeReply, SubscriptionRequest, SyncEvent,
};
use super::upstream::UpstreamError;

/// Message SIDs remembered per conversation to drop repeats. Indexes already drop replays,
/// and the publisher drops a `message_id` it took moments ago; this only guards against an
/// item seen again under another index. Kept small: it is held for every conversation.
const RECENT_SIDS: usize = 32;

enum Internal {
    Opened {
        conversation: String,
        result: Result<(super::sync::Descriptor, Url), String>,
    },
    Joined {
        conversation: String,
        result: Result<JoinOutcome, ConversationsError>,
    },
    CatchupPage {
        conversation: String,
        generation: u64,
        items: Vec<Item>,
    },
    CatchupDone {
        conversation: String,
        generation: u64,
        error: Option<String>,
    },
    RetryCatchup {
        conversation: String,
    },
    Subscribed {
        sids: Vec<String>,
        result: Result<SubscribeReply, String>,
    },
    Left {
        conversation: String,
    },
    LeaveCheckDone,
}

struct MapState {
    sid: String,
    items_url: Url,
    last_event_id: u64,
    item_events: HashMap<String, u64>,
}

struct Conversation {
    sid: String,
    membership: Membership,
    joining: bool,
    join_failed: bool,
    channel: Option<String>,
    messages: Option<String>,
    opening: bool,
    list_sid: Option<String>,
    items_url: Option<Url>,
    list_last_event_id: u64,
    next_emit: u64,
    catchup: Option<Vec<(u64, Value)>>,
    catchup_generation: u64,
    recent: VecDeque<String>,
    recent_set: HashSet<String>,
}

impl Conversation {
    fn remember(&mut self, sid: &str) -> bool {
        if self.recent_set.contains(sid) {
            return false;
        }
        self.recent.push_back(sid.to_owned());
        self.recent_set.insert(sid.to_owned());
        if self.recent.len() > RECENT_SIDS {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        true
    }
}

struct Subscription {
    object_type: ObjectType,
    established: bool,
    deadline: Option<Instant>,
    retried: u32,
}

pub(super) struct Engine {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    events: mpsc::Sender<MessageAdded>,
    session_events: mpsc::UnboundedReceiver<SessionEvent>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    configuration_tx: watch::Sender<Option<Arc<Configuration>>>,
    aim_base: Url,
    map: Option<MapState>,
    conversations: HashMap<String, Conversation>,
    /// list sid → conversation sid
    lists: HashMap<String, String>,
    subscriptions: HashMap<String, Subscription>,
    pending_subscriptions: Vec<String>,
    opens_in_flight: usize,
    repoke_at: Option<Instant>,
    sync_retry_at: Option<Instant>,
    leave_check_at: Option<Instant>,
    left_by_policy: HashSet<String>,
    catchup_permits: Arc<Semaphore>,
    correlation: u64,
}

impl Engine {
    pub(super) fn new(
        inner: Arc<Inner>,
        cancel: CancellationToken,
        events: mpsc::Sender<MessageAdded>,
        session_events: mpsc::UnboundedReceiver<SessionEvent>,
        configuration_tx: watch::Sender<Option<Arc<Configuration>>>,
        aim_base: Url,
    ) -> Self {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let catchup_permits = Arc::new(Semaphore::new(
            inner.config.tuning.catchup_concurrency.max(1),
        ));
        Self {
            inner,
            cancel,
            events,
            session_events,
            internal_tx,
            internal_rx,
            configuration_tx,
            aim_base,
            map: None,
            conversations: HashMap::new(),
            lists: HashMap::new(),
            subscriptions: HashMap::new(),
            pending_subscriptions: Vec::new(),
            opens_in_flight: 0,
            repoke_at: None,
            sync_retry_at: None,
            leave_check_at: None,
            left_by_policy: HashSet::new(),
            catchup_permits,
            correlation: 0,
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Engine {
    fn tuning(&self) -> &Tuning {
        &self.inner.config.tuning
    }

    pub(super) async fn run(mut self) {
        loop {
            let repoke_at = self.repoke_at;
            let sync_retry_at = self.sync_retry_at;
            let leave_check_at = self.leave_check_at;
            let running = tokio::select! {
                _ = self.cancel.cancelled() => false,
                event = self.session_events.recv() => match event {
                    None => false,
                    Some(SessionEvent::Connected { generation, resumed }) => {
                        self.on_connected(generation, resumed).await
                    }
                    Some(SessionEvent::Notification(notification)) => {
                        self.on_notification(&notification.message_type, &notification.payload).await
                    }
                },
                Some(message) = self.internal_rx.recv() => self.on_internal(message).await,
                _ = sleep_until_some(repoke_at) => {
                    self.repoke();
                    true
                }
                _ = sleep_until_some(sync_retry_at) => {
                    self.sync_retry_at = None;
                    self.sync().await
                }
                _ = sleep_until_some(leave_check_at) => {
                    self.leave_check_at = None;
                    self.leave_check();
                    true
                }
            };
            if !running {
                break;
            }
            self.flush_subscriptions();
        }
        tracing::info!("conversations engine stopped");
    }

    async fn on_connected(&mut self, generation: u64, resumed: bool) -> bool {
        tracing::info!(generation, resumed, "syncing conversations");
        // Subscriptions belong to a connection: every object is established again, and the
        // server replays what came after each object's last applied event.
        for (sid, subscription) in self.subscriptions.iter_mut() {
            subscription.established = false;
            subscription.deadline = None;
            subscription.retried = 0;
            if !self.pending_subscriptions.contains(sid) {
                self.pending_subscriptions.push(sid.clone());
            }
        }
        if !self.sync().await {
            return false;
        }
        // History is the authority on what was missed while the socket was down.
        let open: Vec<String> = self
            .conversations
            .values()
            .filter(|c| c.items_url.is_some() && c.membership == Membership::Joined)
            .map(|c| c.sid.clone())
            .collect();
        for sid in open {
            self.start_catchup(&sid);
        }
        true
    }

    /// Loads the configuration once, then (re)reads the conversations map. Returns false
    /// only when the engine must stop.
    async fn sync(&mut self) -> bool {
        match self.try_sync().await {
            Ok(()) => {
                if self.leave_check_at.is_none()
                    && self.inner.config.leave_closed_after_days.is_some()
                {
                    self.leave_check_at = Some(Instant::now() + Duration::from_secs(1));
                }
                true
            }
            Err(ClientError::Upstream(UpstreamError::Cancelled)) => false,
            Err(error) => {
                tracing::warn!(%error, "conversations sync failed; will retry");
                self.sync_retry_at = Some(Instant::now() + self.tuning().retry_pause);
                true
            }
        }
    }

    async fn try_sync(&mut self) -> Result<(), ClientError> {
        let api = self.inner.api.clone();
        let loaded = self.inner.configuration.borrow().clone();
        let configuration = match loaded {
            Some(configuration) => configuration,
            None => {
                let configuration = Arc::new(api.configuration(&self.aim_base).await?);
                if configuration.identity != self.inner.config.identity {
                    tracing::warn!(
                        configured = %self.inner.config.identity,
                        server = %configuration.identity,
                        "Configuration identity differs from the token identity"
                    );
                }
                self.configuration_tx
                    .send_replace(Some(configuration.clone()));
                configuration
            }
        };
        if self.map.is_none() {
            let descriptor = api
                .sync()
                .descriptor(
                    ObjectType::Map,
                    &configuration.sync_objects.my_conversations,
                    false,
                )
                .await
                .map_err(ConversationsError::from)?;
            let items_url = api
                .sync()
                .items_url(ObjectType::Map, &descriptor)
                .map_err(ConversationsError::from)?;
            self.subscriptions.insert(
                descriptor.sid.clone(),
                Subscription {
                    object_type: ObjectType::Map,
                    established: false,
                    deadline: None,
                    retried: 0,
                },
            );
            self.pending_subscriptions.push(descriptor.sid.clone());
            self.map = Some(MapState {
                sid: descriptor.sid,
                items_url,
                last_event_id: descriptor.last_event_id,
                item_events: HashMap::new(),
            });
        }
        let Some(map) = self.map.as_ref() else {
            return Err(ClientError::NotReady("conversations map"));
        };
        let items = api
            .sync()
            .all_map_items(&map.items_url, self.tuning().page_size)
            .await
            .map_err(ConversationsError::from)?;
        let listed: HashSet<String> = items.iter().filter_map(|item| item.key.clone()).collect();
        // Memberships first, so the participant count is right before any join is tried.
        let mut items = items;
        items.sort_by_key(|item| item.data.get("status").and_then(Value::as_str) != Some("joined"));
        for item in items {
            if let Some(key) = item.key.clone() {
                self.map_item(&key, item.last_event_id, Some(&item.data));
            }
        }
        // Conversations no longer in the map were left or removed while we were away.
        let gone: Vec<String> = self
            .conversations
            .keys()
            .filter(|sid| !listed.contains(*sid))
            .cloned()
            .collect();
        for sid in gone {
            self.remove_conversation(&sid);
        }
        Ok(())
    }

    /// Applies one my_conversations item (`data` None = removed).
    fn map_item(&mut self, key: &str, event_id: u64, data: Option<&Value>) {
        if let Some(map) = self.map.as_mut() {
            let seen = map.item_events.get(key).copied().unwrap_or(0);
            if event_id != 0 && event_id < seen {
                return;
            }
            map.item_events.insert(key.to_owned(), event_id.max(seen));
        }
        let Some(data) = data else {
            self.remove_conversation(key);
            return;
        };
        let listed = ConversationListed::from_map_item(key, data);
        if listed.status == Membership::Unknown {
            return;
        }
        let committed = self
            .inner
            .shared()
            .conversations
            .get(key)
            .and_then(|view| view.committed)
            .or_else(|| self.inner.store.get(key));
        let conversation =
            self.conversations
                .entry(key.to_owned())
                .or_insert_with(|| Conversation {
                    sid: key.to_owned(),
                    membership: Membership::Unknown,
                    joining: false,
                    join_failed: false,
                    channel: None,
                    messages: None,
                    opening: false,
                    list_sid: None,
                    items_url: None,
                    list_last_event_id: 0,
                    next_emit: committed.map_or(0, |index| index + 1),
                    catchup: None,
                    catchup_generation: 0,
                    recent: VecDeque::new(),
                    recent_set: HashSet::new(),
                });
        if listed.channel.is_some() {
            conversation.channel = listed.channel.clone();
        }
        if listed.messages.is_some() {
            conversation.messages = listed.messages.clone();
        }
        conversation.membership = listed.status;
        match listed.status {
            Membership::Joined => {
                conversation.joining = false;
                conversation.join_failed = false;
                self.publish_status(key, ConversationStatus::Joined);
                self.open(key);
            }
            Membership::NotParticipating => {
                self.publish_status(key, ConversationStatus::NotParticipating);
                self.join(key);
            }
            Membership::Unknown => {}
        }
    }

    fn publish_status(&self, sid: &str, status: ConversationStatus) {
        let committed = self.inner.store.get(sid);
        let mut shared = self.inner.shared();
        let view = shared
            .conversations
            .entry(sid.to_owned())
            .or_insert_with(|| ConversationView::new(status.clone(), committed));
        view.status = status;
        if let Some(conversation) = self.conversations.get(sid) {
            view.items_url = conversation.items_url.clone();
            view.catching_up = conversation.catchup.is_some();
        }
    }

    fn joined_count(&self) -> usize {
        self.conversations
            .values()
            .filter(|c| c.membership == Membership::Joined || c.joining)
            .count()
    }

    fn join(&mut self, sid: &str) {
        let limit = self.tuning().participant_limit;
        let joined = self.joined_count();
        let Some(conversation) = self.conversations.get_mut(sid) else {
            return;
        };
        if conversation.joining || self.left_by_policy.contains(sid) {
            return;
        }
        let Some(configuration) = self.inner.configuration.borrow().clone() else {
            return;
        };
        if joined >= limit {
            let reason = format!(
                "identity {} is already in {joined} conversations (limit {limit})",
                self.inner.config.identity
            );
            if !conversation.join_failed {
                tracing::error!(conversation = sid, %reason, "cannot join: participant limit reached");
                bump(&self.inner.stats.join_failures);
            }
            conversation.join_failed = true;
            self.inner.shared().participant_limit_reached = Some(reason.clone());
            self.publish_status(sid, ConversationStatus::JoinFailed { reason });
            return;
        }
        conversation.joining = true;
        self.publish_status(sid, ConversationStatus::Joining);
        let api = self.inner.api.clone();
        let identity = self.inner.config.identity.clone();
        let conversation = sid.to_owned();
        let results = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = api.join(&configuration, &conversation, &identity).await;
            let _ = results.send(Internal::Joined {
                conversation,
                result,
            });
        });
    }

    fn on_joined(&mut self, sid: &str, result: Result<JoinOutcome, ConversationsError>) {
        let Some(conversation) = self.conversations.get_mut(sid) else {
            return;
        };
        conversation.joining = false;
        match result {
            Ok(outcome) => {
                bump(&self.inner.stats.joins);
                tracing::info!(conversation = sid, ?outcome, "joined conversation");
                // The map update that follows confirms it; opening now saves a round trip.
                conversation.membership = Membership::Joined;
                conversation.join_failed = false;
                self.publish_status(sid, ConversationStatus::Joined);
                self.open(sid);
            }
            Err(error) => {
                bump(&self.inner.stats.join_failures);
                conversation.join_failed = true;
                let reason = error.to_string();
                if matches!(error, ConversationsError::ParticipantLimit { .. }) {
                    tracing::error!(conversation = sid, %reason, "cannot join: participant limit reached");
                    self.inner.shared().participant_limit_reached = Some(reason.clone());
                } else {
                    tracing::warn!(conversation = sid, %reason, "join failed; retrying later");
                    let later = Instant::now() + self.inner.config.tuning.retry_pause * 12;
                    self.sync_retry_at = Some(self.sync_retry_at.map_or(later, |at| at.min(later)));
                }
                self.publish_status(sid, ConversationStatus::JoinFailed { reason });
            }
        }
    }

    fn remove_conversation(&mut self, sid: &str) {
        let Some(conversation) = self.conversations.remove(sid) else {
            return;
        };
        tracing::info!(conversation = sid, "no longer in this conversation");
        if let Some(list) = conversation.list_sid {
            self.lists.remove(&list);
            self.subscriptions.remove(&list);
            self.pending_subscriptions
                .retain(|pending| pending != &list);
        }
        if let Some(map) = self.map.as_mut() {
            // A later re-add arrives with a higher event id anyway.
            map.item_events.remove(sid);
        }
        let freed = {
            let mut shared = self.inner.shared();
            shared.conversations.remove(sid);
            shared.participant_limit_reached.take().is_some()
        };
        if freed {
            // A slot opened: retry the invitations that hit the limit.
            let waiting: Vec<String> = self
                .conversations
                .values()
                .filter(|c| c.membership == Membership::NotParticipating && c.join_failed)
                .map(|c| c.sid.clone())
                .collect();
            for sid in waiting {
                if let Some(conversation) = self.conversations.get_mut(&sid) {
                    conversation.join_failed = false;
                }
                self.join(&sid);
            }
        }
    }

    fn open(&mut self, sid: &str) {
        let Some(conversation) = self.conversations.get_mut(sid) else {
            return;
        };
        if conversation.opening || conversation.items_url.is_some() {
            return;
        }
        let messages = conversation.messages.clone();
        let channel = conversation.channel.clone();
        if messages.is_none() && channel.is_none() {
            tracing::warn!(
                conversation = sid,
                "map item names neither messages nor channel"
            );
            return;
        }
        conversation.opening = true;
        self.opens_in_flight += 1;
        let api = self.inner.api.clone();
        let results = self.internal_tx.clone();
        let conversation = sid.to_owned();
        tokio::spawn(async move {
            let result = async {
                let messages = match messages {
                    Some(messages) => messages,
                    None => {
                        let channel = channel.unwrap_or_default();
                        let document = api.document(&channel).await.map_err(|e| e.to_string())?;
                        document
                            .get("messages")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .ok_or_else(|| {
                                "conversation document names no messages list".to_owned()
                            })?
                    }
                };
                let descriptor = api
                    .sync()
                    .descriptor(ObjectType::List, &messages, false)
                    .await
                    .map_err(|e| e.to_string())?;
                let items_url = api
                    .sync()
                    .items_url(ObjectType::List, &descriptor)
                    .map_err(|e| e.to_string())?;
                Ok((descriptor, items_url))
            }
            .await;
            let _ = results.send(Internal::Opened {
                conversation,
                result,
            });
        });
    }

    fn on_opened(&mut self, sid: &str, result: Result<(super::sync::Descriptor, Url), String>) {
        self.opens_in_flight = self.opens_in_flight.saturating_sub(1);
        let Some(conversation) = self.conversations.get_mut(sid) else {
            return;
        };
        conversation.opening = false;
        match result {
            Ok((descriptor, items_url)) => {
                conversation.list_sid = Some(descriptor.sid.clone());
                conversation.items_url = Some(items_url);
                conversation.list_last_event_id = descriptor.last_event_id;
                self.lists.insert(descriptor.sid.clone(), sid.to_owned());
                self.subscriptions.insert(
                    descriptor.sid.clone(),
                    Subscription {
                        object_type: ObjectType::List,
                        established: false,
                        deadline: None,
                        retried: 0,
                    },
                );
                self.pending_subscriptions.push(descriptor.sid);
                self.publish_status(sid, ConversationStatus::Joined);
                self.start_catchup(sid);
            }
            Err(error) => {
                tracing::warn!(conversation = sid, %error, "cannot open messages list; retrying");
                self.sync_retry_at
                    .get_or_insert(Instant::now() + self.inner.config.tuning.retry_pause);
            }
        }
    }

    fn start_catchup(&mut self, sid: &str) {
        let page_size = self.tuning().page_size;
        let Some(conversation) = self.conversations.get_mut(sid) else {
            return;
        };
        let Some(items_url) = conversation.items_url.clone() else {
            return;
        };
        conversation.catchup_generation += 1;
        let generation = conversation.catchup_generation;
        if conversation.catchup.is_none() {
            conversation.catchup = Some(Vec::new());
        }
        let mut from = conversation.next_emit;
        bump(&self.inner.stats.catchups);
        if let Some(view) = self.inner.shared().conversations.get_mut(sid) {
            view.catching_up = true;
        }
        let api = self.inner.api.clone();
        let permits = self.catchup_permits.clone();
        let results = self.internal_tx.clone();
        let conversation = sid.to_owned();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let error = loop {
                match api
                    .messages_page(&items_url, Some(from), Direction::Forward, page_size)
                    .await
                {
                    Ok((items, more)) => {
                        let last = items.iter().filter_map(|item| item.index).max();
                        let _ = results.send(Internal::CatchupPage {
                            conversation: conversation.clone(),
                            generation,
                            items,
                        });
                        match last {
                            Some(last) if more && last >= from => from = last + 1,
                            _ => break None,
                        }
                    }
                    Err(error) => break Some(error.to_string()),
                }
            };
            let _ = results.send(Internal::CatchupDone {
                conversation,
                generation,
                error,
            });
        });
    }

    async fn on_internal(&mut self, message: Internal) -> bool {
        match message {
            Internal::Opened {
                conversation,
                result,
            } => self.on_opened(&conversation, result),
            Internal::Joined {
                conversation,
                result,
            } => self.on_joined(&conversation, result),
            Internal::CatchupPage {
                conversation,
                generation,
                items,
            } => {
                let current = self
                    .conversations
                    .get(&conversation)
                    .is_some_and(|c| c.catchup_generation == generation && c.catchup.is_some());
                if current {
                    for item in items {
                        if let Some(index) = item.index {
                            if !self.accept(&conversation, index, &item.data, true).await {
                                return false;
                            }
                        }
                    }
                }
            }
            Internal::CatchupDone {
                conversation,
                generation,
                error,
            } => return self.on_catchup_done(&conversation, generation, error).await,
            Internal::RetryCatchup { conversation } => self.start_catchup(&conversation),
            Internal::Subscribed { sids, result } => self.on_subscribed(sids, result),
            Internal::Left { conversation } => {
                bump(&self.inner.stats.leaves);
                self.left_by_policy.insert(conversation.clone());
                self.remove_conversation(&conversation);
            }
            Internal::LeaveCheckDone => {
                self.leave_check_at = Some(Instant::now() + self.tuning().leave_check_interval);
            }
        }
        true
    }

    async fn on_catchup_done(&mut self, sid: &str, generation: u64, error: Option<String>) -> bool {
        let Some(conversation) = self.conversations.get_mut(sid) else {
            return true;
        };
        if conversation.catchup_generation != generation {
            return true;
        }
        if let Some(error) = error {
            // Keep buffering: releasing the buffer now could skip what history did not return.
            tracing::warn!(conversation = sid, %error, "catch-up failed; retrying");
            let results = self.internal_tx.clone();
            let pause = self.inner.config.tuning.retry_pause;
            let conversation = sid.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                let _ = results.send(Internal::RetryCatchup { conversation });
            });
            return true;
        }
        let mut buffered = conversation.catchup.take().unwrap_or_default();
        if let Some(view) = self.inner.shared().conversations.get_mut(sid) {
            view.catching_up = false;
        }
        buffered.sort_by_key(|(index, _)| *index);
        for (index, data) in buffered {
            if !self.accept(sid, index, &data, true).await {
                return false;
            }
        }
        true
    }

    /// Emits the message at `index` if it is the next one. `relaxed` accepts a jump forward
    /// (history is authoritative: deleted messages leave holes). Returns false when the
    /// consumer is gone.
    async fn accept(&mut self, sid: &str, index: u64, data: &Value, relaxed: bool) -> bool {
        let identity = self.inner.config.identity.clone();
        let account = self.inner.config.account_sid.clone();
        let service = self.inner.config.chat_service_sid.clone();
        let Some(conversation) = self.conversations.get_mut(sid) else {
            return true;
        };
        if index < conversation.next_emit {
            bump(&self.inner.stats.duplicates_dropped);
            return true;
        }
        if let Some(buffer) = conversation.catchup.as_mut() {
            if !relaxed {
                buffer.push((index, data.clone()));
                return true;
            }
        } else if !relaxed && index > conversation.next_emit {
            tracing::info!(
                conversation = sid,
                expected = conversation.next_emit,
                got = index,
                "message index gap; catching up from history"
            );
            conversation.catchup = Some(vec![(index, data.clone())]);
            self.start_catchup(sid);
            return true;
        }
        conversation.next_emit = index + 1;
        let Some(message) = MessageAdded::from_list_item(&account, &service, sid, index, data)
        else {
            bump(&self.inner.stats.malformed_messages);
            tracing::warn!(
                conversation = sid,
                index,
                "message item without sid or author skipped"
            );
            self.skip(sid, index);
            return true;
        };
        if !conversation.remember(&message.message_sid) {
            bump(&self.inner.stats.duplicates_dropped);
            return true;
        }
        if message.is_own(&identity) {
            bump(&self.inner.stats.own_messages_skipped);
            self.skip(sid, index);
            return true;
        }
        if let Some(view) = self.inner.shared().conversations.get_mut(sid) {
            view.emitted = Some(index);
            view.skipped = None;
        }
        bump(&self.inner.stats.messages_emitted);
        self.events.send(message).await.is_ok()
    }

    /// Moves the checkpoint over a message that is not published, once nothing before it is
    /// waiting for a commit.
    fn skip(&self, sid: &str, index: u64) {
        let checkpoint = {
            let mut shared = self.inner.shared();
            let Some(view) = shared.conversations.get_mut(sid) else {
                return;
            };
            if view.nothing_outstanding() {
                let committed = view.committed.map_or(index, |c| c.max(index));
                view.committed = Some(committed);
                Some(committed)
            } else {
                view.skipped = Some(index);
                None
            }
        };
        if let Some(checkpoint) = checkpoint {
            self.inner.store_checkpoint(sid, checkpoint);
        }
    }

    async fn on_notification(&mut self, message_type: &str, payload: &Value) -> bool {
        if !super::sync::is_sync_message_type(message_type) {
            return true;
        }
        let events = match super::sync::parse_notification(payload) {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, message_type, "unusable Sync notification");
                return true;
            }
        };
        for event in events {
            if !self.on_sync_event(event).await {
                return false;
            }
        }
        true
    }

    async fn on_sync_event(&mut self, event: SyncEvent) -> bool {
        match event {
            SyncEvent::Item {
                object_type: ObjectType::List,
                object_sid,
                event_id,
                change,
                key: ItemKey::Index(index),
                data,
            } => {
                let Some(sid) = self.lists.get(&object_sid).cloned() else {
                    return true;
                };
                let Some(conversation) = self.conversations.get_mut(&sid) else {
                    return true;
                };
                if event_id <= conversation.list_last_event_id {
                    bump(&self.inner.stats.duplicates_dropped);
                    return true;
                }
                conversation.list_last_event_id = event_id;
                if change == Change::Added {
                    return self.accept(&sid, index, &data, false).await;
                }
            }
            SyncEvent::Item {
                object_type: ObjectType::Map,
                object_sid,
                event_id,
                change,
                key: ItemKey::Key(key),
                data,
            } => {
                let Some(map) = self.map.as_mut() else {
                    return true;
                };
                if map.sid != object_sid {
                    return true;
                }
                map.last_event_id = map.last_event_id.max(event_id);
                let data = (change != Change::Removed).then_some(&data);
                self.map_item(&key, event_id, data);
            }
            SyncEvent::Established { objects, .. } => {
                for (sid, last_event_id) in objects {
                    if let Some(subscription) = self.subscriptions.get_mut(&sid) {
                        subscription.established = true;
                        subscription.deadline = None;
                    }
                    // Replay is complete here; if the object moved past what we applied,
                    // history fills the hole.
                    if let (Some(conversation_sid), Some(last)) =
                        (self.lists.get(&sid).cloned(), last_event_id)
                    {
                        let behind = self
                            .conversations
                            .get(&conversation_sid)
                            .is_some_and(|c| c.list_last_event_id < last && c.catchup.is_none());
                        if behind {
                            self.start_catchup(&conversation_sid);
                        }
                    }
                }
            }
            SyncEvent::Failed {
                object_sid,
                status,
                message,
            } => {
                tracing::warn!(%object_sid, ?status, ?message, "Sync subscription failed");
                if status == Some(404) {
                    if let Some(sid) = self.lists.get(&object_sid).cloned() {
                        self.remove_conversation(&sid);
                    }
                } else if let Some(subscription) = self.subscriptions.get_mut(&object_sid) {
                    subscription.deadline =
                        Some(Instant::now() + self.inner.config.tuning.retry_pause);
                    self.repoke_at = Some(self.repoke_at.map_or(
                        Instant::now() + self.inner.config.tuning.retry_pause,
                        |at| at.min(Instant::now() + self.inner.config.tuning.retry_pause),
                    ));
                }
            }
            SyncEvent::Removed {
                object_type: ObjectType::List,
                object_sid,
            } => {
                if let Some(sid) = self.lists.get(&object_sid).cloned() {
                    self.remove_conversation(&sid);
                }
            }
            _ => {}
        }
        true
    }

    fn flush_subscriptions(&mut self) {
        if self.pending_subscriptions.is_empty()
            || (self.opens_in_flight > 0 && self.pending_subscriptions.len() < 100)
            || self.inner.session.state().borrow().clone() != TransportState::Connected
        {
            return;
        }
        let pending = std::mem::take(&mut self.pending_subscriptions);
        for chunk in pending.chunks(100) {
            let requests: Vec<SubscriptionRequest> = chunk
                .iter()
                .filter_map(|sid| {
                    let subscription = self.subscriptions.get(sid)?;
                    let last_event_id = match subscription.object_type {
                        ObjectType::Map => self.map.as_ref()?.last_event_id,
                        _ => {
                            self.conversations
                                .get(self.lists.get(sid)?)?
                                .list_last_event_id
                        }
                    };
                    Some(SubscriptionRequest {
                        object_sid: sid.clone(),
                        object_type: subscription.object_type,
                        last_event_id,
                    })
                })
                .collect();
            if requests.is_empty() {
                continue;
            }
            let retried = chunk
                .iter()
                .filter_map(|sid| self.subscriptions.get(sid).map(|s| s.retried))
                .max()
                .unwrap_or(0);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            self.correlation = now_ms.max(self.correlation + 1);
            let correlation = self.correlation;
            let sync = self.inner.api.sync().clone();
            let results = self.internal_tx.clone();
            let sids: Vec<String> = requests.iter().map(|r| r.object_sid.clone()).collect();
            tokio::spawn(async move {
                let result = sync
                    .subscribe(true, correlation, retried, &requests)
                    .await
                    .map_err(|e| e.to_string());
                let _ = results.send(Internal::Subscribed { sids, result });
            });
        }
    }

    fn on_subscribed(&mut self, sids: Vec<String>, result: Result<SubscribeReply, String>) {
        let wait = match &result {
            Ok(reply) => {
                Duration::from_millis(reply.estimated_delivery_in_ms.unwrap_or(5000).max(100))
            }
            Err(error) => {
                tracing::warn!(%error, "Sync subscribe failed; retrying");
                self.tuning().retry_pause
            }
        };
        let deadline = Instant::now() + wait;
        for sid in sids {
            if let Some(subscription) = self.subscriptions.get_mut(&sid) {
                if !subscription.established {
                    subscription.deadline = Some(deadline);
                }
            }
        }
        self.repoke_at = Some(self.repoke_at.map_or(deadline, |at| at.min(deadline)));
    }

    /// Re-requests subscriptions whose `subscription_established` has not arrived in time.
    fn repoke(&mut self) {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (sid, subscription) in self.subscriptions.iter_mut() {
            match subscription.deadline {
                Some(deadline) if deadline <= now && !subscription.established => {
                    subscription.deadline = None;
                    subscription.retried += 1;
                    if !self.pending_subscriptions.contains(sid) {
                        self.pending_subscriptions.push(sid.clone());
                    }
                }
                Some(deadline) if !subscription.established => {
                    next = Some(next.map_or(deadline, |at: Instant| at.min(deadline)));
                }
                _ => {}
            }
        }
        self.repoke_at = next;
    }

    /// Opt-in policy: leave conversations closed for longer than the configured days.
    fn leave_check(&mut self) {
        let Some(days) = self.inner.config.leave_closed_after_days else {
            return;
        };
        let Some(configuration) = self.inner.configuration.borrow().clone() else {
            self.leave_check_at = Some(Instant::now() + self.tuning().retry_pause);
            return;
        };
        let candidates: Vec<(String, String)> = self
            .conversations
            .values()
            .filter(|c| c.membership == Membership::Joined)
            .filter_map(|c| Some((c.sid.clone(), c.channel.clone()?)))
            .collect();
        let api = self.inner.api.clone();
        let identity = self.inner.config.identity.clone();
        let results = self.internal_tx.clone();
        tokio::spawn(async move {
            let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
            for (sid, channel) in candidates {
                let document = match api.document(&channel).await {
                    Ok(document) => document,
                    Err(error) => {
                        tracing::debug!(conversation = %sid, %error, "cannot read conversation state");
                        continue;
                    }
                };
                if !closed_before(&document, cutoff) {
                    continue;
                }
                match api.leave(&configuration, &sid, &identity).await {
                    Ok(()) => {
                        tracing::info!(conversation = %sid, days, "left a closed conversation");
                        let _ = results.send(Internal::Left { conversation: sid });
                    }
                    Err(error) => tracing::warn!(conversation = %sid, %error, "leaving failed"),
                }
            }
            let _ = results.send(Internal::LeaveCheckDone);
        });
    }
}

/// Whether a conversation document says it has been closed since before `cutoff`.
pub fn closed_before(document: &Value, cutoff: chrono::DateTime<chrono::Utc>) -> bool {
    let state = document.get("state");
    let closed = state
        .and_then(|s| s.get("current"))
        .and_then(Value::as_str)
        .is_some_and(|current| current == "closed");
    let since = state
        .and_then(|s| s.get("dateUpdated"))
        .and_then(Value::as_str)
        .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok());
    closed && since.is_some_and(|since| since < cutoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn closed_conversations_past_the_cutoff() {
        let now = chrono::Utc::now();
        let old = (now - chrono::Duration::days(10)).to_rfc3339();
        let recent = (now - chrono::Duration::hours(1)).to_rfc3339();
        let cutoff = now - chrono::Duration::days(7);
        assert!(closed_before(
            &json!({"state": {"current": "closed", "dateUpdated": old}}),
            cutoff
        ));
        assert!(!closed_before(
            &json!({"state": {"current": "closed", "dateUpdated": recent}}),
            cutoff
        ));
        assert!(!closed_before(
            &json!({"state": {"current": "active", "dateUpdated": old}}),
            cutoff
        ));
        assert!(!closed_before(&json!({}), cutoff));
    }
}
