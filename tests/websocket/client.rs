//! The socket client on its own against the emulator: what it emits, joins, sends and
//! checkpoints, across token renewals, drops and restarts.

use std::sync::Arc;
use std::time::Duration;

use ingress_egress::connectors::twilio::websocket::{
    checkpoint::{CheckpointStore, FileCheckpointStore, MemoryCheckpointStore},
    client::{Client, ClientHandle},
    conversations::MessageAdded,
    options::{Config, Tuning},
    session::TransportState,
    upstream::RetryPolicy,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::emulator::{
    Emulator, ACCOUNT_SID, API_KEY_SECRET, API_KEY_SID, BOT, CHAT_SERVICE_SID, SMS_USER, WAIT,
};

fn config(emulator: &Emulator) -> Config {
    let mut config = Config::new(
        ACCOUNT_SID,
        API_KEY_SID,
        SecretString::from(API_KEY_SECRET),
        CHAT_SERVICE_SID,
        BOT,
        emulator.url(),
    );
    config.tuning = Tuning {
        reconnect_base: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(400),
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            attempts: 6,
            base: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        retry_pause: Duration::from_millis(200),
        ..Tuning::default()
    };
    config
}

struct Running {
    events: mpsc::Receiver<MessageAdded>,
    handle: ClientHandle,
    cancel: CancellationToken,
}

impl Running {
    fn start(config: Config, store: Arc<dyn CheckpointStore>) -> Self {
        let cancel = CancellationToken::new();
        let (events, handle) = Client::start(config, store, cancel.clone()).expect("client starts");
        Self {
            events,
            handle,
            cancel,
        }
    }

    async fn next(&mut self) -> MessageAdded {
        timeout(WAIT, self.events.recv())
            .await
            .expect("no message in time")
            .expect("event stream ended")
    }

    async fn none_within(&mut self, wait: Duration) {
        if let Ok(Some(message)) = timeout(wait, self.events.recv()).await {
            panic!("unexpected message {message:?}");
        }
    }

    async fn connected(&self) {
        let mut state = self.handle.state();
        timeout(WAIT, state.wait_for(|s| *s == TransportState::Connected))
            .await
            .expect("not connected in time")
            .expect("state channel");
    }

    /// Waits until the snapshot satisfies `check`.
    async fn until(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let snapshot = self.handle.snapshot();
            if check(&snapshot) {
                return snapshot;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {snapshot:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn synced(&self, conversation: &str) -> Value {
        self.until("conversation synced", |s| {
            s["conversations"].as_array().is_some_and(|list| {
                list.iter().any(|c| {
                    c["sid"] == conversation && c["status"] == "joined" && c["catchingUp"] == false
                })
            })
        })
        .await
    }

    async fn stop(self) {
        self.cancel.cancel();
        timeout(WAIT, self.handle.stopped())
            .await
            .expect("client stops");
    }
}

fn memory() -> Arc<dyn CheckpointStore> {
    Arc::new(MemoryCheckpointStore::default())
}

#[tokio::test]
async fn connects_syncs_and_emits_history_then_live() {
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let (first, _) = emulator
        .message(&conversation, SMS_USER, "before start")
        .await;
    let mut client = Running::start(config(&emulator), memory());
    client.connected().await;
    let message = client.next().await;
    assert_eq!(
        (message.message_sid.as_str(), message.index),
        (first.as_str(), 0)
    );
    assert_eq!(message.body, "before start");
    assert_eq!(message.author, SMS_USER);
    assert_eq!(message.conversation_sid, conversation);
    assert!(message
        .participant_sid
        .as_deref()
        .is_some_and(|p| p.starts_with("MB")));
    let snapshot = client.synced(&conversation).await;
    assert_eq!(snapshot["connection"]["state"], "connected");
    assert_eq!(snapshot["identity"], BOT);
    assert!(snapshot["tokenExpiresAt"].is_string());
    assert_eq!(snapshot["joined"], 1);
    let text = snapshot.to_string();
    assert!(!text.contains("emulator-api-key-secret") && !text.contains("eyJ"));

    let (live, index) = emulator.message(&conversation, SMS_USER, "live").await;
    let message = client.next().await;
    assert_eq!((message.message_sid.clone(), message.index), (live, index));
    // Exactly once: nothing more arrives.
    client.none_within(Duration::from_millis(700)).await;
    let params: std::collections::HashMap<_, _> = message_params(&message);
    assert_eq!(params["EventType"], "onMessageAdded");
    client.stop().await;
}

fn message_params(message: &MessageAdded) -> std::collections::HashMap<String, String> {
    message.webhook_params().into_iter().collect()
}

#[tokio::test]
async fn joins_not_participating_conversations_at_start_and_live() {
    let emulator = Emulator::start(&[]).await;
    let invited = emulator.conversation().await;
    emulator
        .post(
            &format!("/conversations/{invited}/participants"),
            json!({"address": SMS_USER}),
        )
        .await;
    let (first, _) = emulator.message(&invited, SMS_USER, "anyone there?").await;
    emulator
        .post(
            &format!("/conversations/{invited}/invite"),
            json!({"identity": BOT}),
        )
        .await;
    let mut client = Running::start(config(&emulator), memory());
    // The message from before the join is delivered once the bot is in.
    let message = client.next().await;
    assert_eq!(message.message_sid, first);
    client.synced(&invited).await;
    let (_, details) = emulator
        .call("GET", &format!("/conversations/{invited}"), None)
        .await;
    assert!(details["participants"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["identity"] == BOT));

    // An invitation while running is joined too.
    let later = emulator.conversation().await;
    emulator
        .post(
            &format!("/conversations/{later}/participants"),
            json!({"address": "+15559990000"}),
        )
        .await;
    emulator
        .post(
            &format!("/conversations/{later}/invite"),
            json!({"identity": BOT}),
        )
        .await;
    client.synced(&later).await;
    let (sid, _) = emulator
        .message(&later, "+15559990000", "hello later")
        .await;
    assert_eq!(client.next().await.message_sid, sid);
    let snapshot = client.handle.snapshot();
    assert_eq!(snapshot["joined"], 2);
    assert!(snapshot["counters"]["joins"].as_u64().unwrap() >= 2);
    client.stop().await;
}

#[tokio::test]
async fn own_messages_are_not_republished_and_keys_resolve() {
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let mut client = Running::start(config(&emulator), memory());
    client.synced(&conversation).await;

    let key = "evt-1:0";
    let sent = client
        .handle
        .send_message(
            &conversation,
            "hi from the bot",
            &json!({"origin": "ingress-egress", "key": key}).to_string(),
        )
        .await
        .expect("send over the socket");
    emulator
        .message(&conversation, BOT, "authored by the bot identity")
        .await;
    let (user, user_index) = emulator
        .message(&conversation, SMS_USER, "user reply")
        .await;
    let message = client.next().await;
    assert_eq!((message.message_sid, message.index), (user, user_index));
    client.none_within(Duration::from_millis(500)).await;

    let found = client
        .handle
        .find_message_by_key(&conversation, key)
        .await
        .expect("lookup");
    assert_eq!(found, Some(sent.clone()));
    assert_eq!(
        client
            .handle
            .find_message_by_key(&conversation, "evt-2:0")
            .await
            .expect("lookup"),
        None
    );
    let (_, messages) = emulator
        .call(
            "GET",
            &format!("/conversations/{conversation}/messages"),
            None,
        )
        .await;
    let posted = &messages["messages"][sent.index as usize];
    assert_eq!(posted["author"], BOT);
    let attributes: Value = serde_json::from_str(posted["attributes"].as_str().unwrap()).unwrap();
    assert_eq!(attributes["key"], key);
    // Both own messages were skipped, and the checkpoint moved over them after the commit.
    client.handle.commit(&conversation, user_index);
    let snapshot = client.handle.snapshot();
    assert_eq!(snapshot["counters"]["ownMessagesSkipped"], 2);
    client.stop().await;
}

#[tokio::test]
async fn token_about_to_expire_renews_without_reconnecting() {
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let mut client = Running::start(config(&emulator), memory());
    client.synced(&conversation).await;
    // A different token needs a different second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    emulator.post("/tokens/about-to-expire", json!({})).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while emulator.state().await["tokenUpdates"].as_u64().unwrap_or(0) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no token update");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (sid, _) = emulator
        .message(&conversation, SMS_USER, "after renewal")
        .await;
    assert_eq!(client.next().await.message_sid, sid);
    let state = emulator.state().await;
    assert_eq!(state["inits"], 1);
    let stats = client.handle.session_stats();
    assert_eq!(
        stats.reconnects.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        stats
            .token_renewals
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    client.stop().await;
}

#[tokio::test]
async fn expired_token_reconnects_with_a_new_one_and_loses_nothing() {
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let mut client = Running::start(config(&emulator), memory());
    client.synced(&conversation).await;
    emulator.post("/tokens/expire", json!({})).await;
    let (during, _) = emulator
        .message(&conversation, SMS_USER, "while expiring")
        .await;
    assert_eq!(client.next().await.message_sid, during);
    let deadline = tokio::time::Instant::now() + WAIT;
    while emulator.state().await["inits"].as_u64().unwrap_or(0) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no re-init");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.connected().await;
    let (after, _) = emulator
        .message(&conversation, SMS_USER, "after expiry")
        .await;
    assert_eq!(client.next().await.message_sid, after);
    client.none_within(Duration::from_millis(500)).await;
    assert!(
        client
            .handle
            .session_stats()
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    client.stop().await;
}

#[tokio::test]
async fn messages_during_an_outage_arrive_once_in_order() {
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let mut client = Running::start(config(&emulator), memory());
    client.synced(&conversation).await;
    let (zero, _) = emulator.message(&conversation, SMS_USER, "m0").await;
    assert_eq!(client.next().await.message_sid, zero);

    emulator.post("/sockets/refuse", json!({"on": true})).await;
    emulator
        .post("/sockets/drop", json!({"mode": "terminate"}))
        .await;
    let mut state = client.handle.state();
    timeout(WAIT, state.wait_for(|s| *s != TransportState::Connected))
        .await
        .expect("drop noticed")
        .expect("state");
    let mut expected = Vec::new();
    for body in ["m1", "m2", "m3"] {
        expected.push(emulator.message(&conversation, SMS_USER, body).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    emulator.post("/sockets/refuse", json!({"on": false})).await;
    for (sid, index) in expected {
        let message = client.next().await;
        assert_eq!((message.message_sid, message.index), (sid, index));
    }
    client.none_within(Duration::from_millis(700)).await;
    assert!(
        client
            .handle
            .session_stats()
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    client.stop().await;
}

#[tokio::test]
async fn restart_resumes_from_the_checkpoint() {
    let emulator = Emulator::start(&[]).await;
    let directory = tempfile::tempdir().expect("temp dir");
    let conversation = emulator.joined_conversation().await;
    emulator.message(&conversation, SMS_USER, "one").await;
    emulator.message(&conversation, SMS_USER, "two").await;

    let store: Arc<dyn CheckpointStore> =
        Arc::new(FileCheckpointStore::open(directory.path()).expect("store"));
    let mut client = Running::start(config(&emulator), store);
    for expected in 0..2 {
        let message = client.next().await;
        assert_eq!(message.index, expected);
        client
            .handle
            .commit(&message.conversation_sid, message.index);
    }
    client.handle.flush_checkpoints().await.expect("flush");
    client.stop().await;

    let (three, _) = emulator.message(&conversation, SMS_USER, "three").await;
    let (four, _) = emulator.message(&conversation, SMS_USER, "four").await;
    let store: Arc<dyn CheckpointStore> =
        Arc::new(FileCheckpointStore::open(directory.path()).expect("store"));
    assert_eq!(store.get(&conversation), Some(1));
    let mut client = Running::start(config(&emulator), store);
    assert_eq!(client.next().await.message_sid, three);
    assert_eq!(client.next().await.message_sid, four);
    client.none_within(Duration::from_millis(700)).await;
    let snapshot = client.synced(&conversation).await;
    let entry = snapshot["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["sid"] == conversation)
        .cloned()
        .unwrap();
    assert_eq!(entry["checkpoint"], 1);
    assert_eq!(entry["lastEmitted"], 3);
    client.stop().await;
}

#[tokio::test]
async fn participant_cap_is_reported() {
    let emulator = Emulator::start(&[("EMULATOR_PARTICIPANT_LIMIT", "1")]).await;
    let joined = emulator.joined_conversation().await;
    let invited = emulator.conversation().await;
    emulator
        .post(
            &format!("/conversations/{invited}/invite"),
            json!({"identity": BOT}),
        )
        .await;
    let client = Running::start(config(&emulator), memory());
    client.synced(&joined).await;
    // The server refuses the join with 50214 (the local pre-check is set above the server's
    // limit on purpose, so the server's answer is what is tested).
    let snapshot = client
        .until("limit reported", |s| {
            !s["participantLimitReached"].is_null()
        })
        .await;
    let entry = snapshot["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["sid"] == invited)
        .cloned()
        .unwrap();
    assert_eq!(entry["status"], "join_failed");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("maximum number of conversations"),
        "{entry}"
    );
    assert!(snapshot["counters"]["joinFailures"].as_u64().unwrap() >= 1);
    client.stop().await;
}

#[tokio::test]
async fn local_participant_limit_stops_joining_before_the_server_does() {
    let emulator = Emulator::start(&[]).await;
    let joined = emulator.joined_conversation().await;
    let invited = emulator.conversation().await;
    emulator
        .post(
            &format!("/conversations/{invited}/invite"),
            json!({"identity": BOT}),
        )
        .await;
    let mut config = config(&emulator);
    config.tuning.participant_limit = 1;
    let client = Running::start(config, memory());
    client.synced(&joined).await;
    let snapshot = client
        .until("limit reported", |s| {
            !s["participantLimitReached"].is_null()
        })
        .await;
    assert!(snapshot["participantLimitReached"]
        .as_str()
        .unwrap()
        .contains("limit 1"));
    let state = emulator.state().await;
    assert_eq!(Emulator::upstream_count(&state, "/Participants"), 0);
    client.stop().await;
}

#[tokio::test]
async fn upstream_429s_are_retried() {
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    emulator
        .post(
            "/faults",
            json!({"upstream429": 2, "match": "/Client/v2/Configuration"}),
        )
        .await;
    let mut client = Running::start(config(&emulator), memory());
    client.synced(&conversation).await;
    let state = emulator.state().await;
    assert_eq!(
        Emulator::upstream_count(&state, "/Client/v2/Configuration"),
        3
    );
    assert_eq!(state["pendingFaults"], 0);
    // And a 429 on a message send is retried too (refused, so safe to repeat).
    emulator
        .post("/faults", json!({"upstream429": 1, "match": "/Messages"}))
        .await;
    let sent = client
        .handle
        .send_message(
            &conversation,
            "after 429",
            &json!({"origin": "ingress-egress", "key": "k:0"}).to_string(),
        )
        .await
        .expect("sent after retry");
    let (_, messages) = emulator
        .call(
            "GET",
            &format!("/conversations/{conversation}/messages"),
            None,
        )
        .await;
    assert_eq!(messages["messages"].as_array().unwrap().len(), 1);
    assert_eq!(messages["messages"][0]["sid"], sent.sid);
    client.none_within(Duration::from_millis(300)).await;
    client.stop().await;
}
