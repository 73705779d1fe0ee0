//! The service with `TWILIO_TRANSPORT=websocket` (or `both`) against the emulator and a real
//! RabbitMQ: what reaches the broker, once, across renewals, drops and restarts; what
//! `/readyz`, `/_debug/twilio` and `/metrics` say; replies posted over the socket.

use std::{net::TcpListener, time::Duration};

use ingress_egress::{
    configuration::Settings, connectors::twilio::ingress::signature::compute_signature,
    startup::Application,
};
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    BasicProperties, Connection, ConnectionProperties,
};
use serde_json::{json, Value};

use crate::{
    emulator::{
        Emulator, ACCOUNT_SID, API_KEY_SECRET, API_KEY_SID, BOT, CHAT_SERVICE_SID, SMS_USER, WAIT,
    },
    helpers::{base_vars, fixture_tokens, spawn_app, BusTap, TestApp},
    require_broker,
};

const INGRESS: &str = "internal.ingress.v1";
/// Long enough for a duplicate to have shown up, were one coming.
const QUIET: Duration = Duration::from_millis(1500);

/// Settings pointing the app's socket at `emulator`.
fn socket_vars(emulator: &Emulator, transport: &str) -> Vec<(String, String)> {
    [
        ("TWILIO_TRANSPORT", transport.to_owned()),
        ("TWILIO_TWILSOCK_URL", emulator.url()),
        ("TWILIO_ACCOUNT_SID", ACCOUNT_SID.to_owned()),
        ("TWILIO_API_KEY", API_KEY_SID.to_owned()),
        ("TWILIO_API_SECRET", API_KEY_SECRET.to_owned()),
        ("TWILIO_CHAT_SERVICE_SID", CHAT_SERVICE_SID.to_owned()),
        ("TWILIO_IDENTITY", BOT.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// An app on `exchange` (so a tap can be bound before it publishes anything) with the socket
/// on `emulator`, plus `extra` variables; returns once `/readyz` says the socket is up.
async fn socket_app(
    url: &str,
    emulator: &Emulator,
    exchange: &str,
    transport: &str,
    extra: &[(&str, &str)],
) -> TestApp {
    let mut vars = socket_vars(emulator, transport);
    vars.push(("AMQP_EXCHANGE".into(), exchange.into()));
    for (key, value) in extra {
        vars.retain(|(k, _)| k != key);
        vars.push(((*key).into(), (*value).into()));
    }
    let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_app(Some(url), &borrowed).await
}

fn new_exchange() -> String {
    format!("test-ws-{}", uuid::Uuid::new_v4().simple())
}

/// The next envelope on the tap, with its AMQP `message_id`.
async fn next_envelope(tap: &mut BusTap) -> (String, Value) {
    let (delivery, json) = tap.next_json().await;
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default();
    (message_id, json)
}

/// Nothing more arrives for a while.
async fn nothing_more(tap: &mut BusTap) {
    if let Some(delivery) = tap.next(QUIET).await {
        panic!(
            "unexpected message {:?}: {}",
            delivery.properties.message_id(),
            String::from_utf8_lossy(&delivery.data)
        );
    }
}

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.get(path).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn snapshot(app: &TestApp) -> Value {
    get_json(app, "/_debug/twilio").await.1["twilio"]["transport"]["socket"].clone()
}

/// Waits until the socket's snapshot satisfies `check`.
async fn until(app: &TestApp, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let socket = snapshot(app).await;
        if check(&socket) {
            return socket;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {socket:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn conversation_entry(socket: &Value, sid: &str) -> Value {
    socket["conversations"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["sid"] == sid))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until `/readyz` answers `status`.
async fn readyz_becomes(app: &TestApp, status: u16) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = get_json(app, "/readyz").await;
        if code == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Drops the socket and keeps it from coming back until [`restore_socket`]; returns once
/// `/readyz` says it is down.
async fn cut_socket(emulator: &Emulator, app: &TestApp) -> Value {
    emulator.post("/sockets/refuse", json!({"on": true})).await;
    emulator
        .post("/sockets/drop", json!({"mode": "terminate"}))
        .await;
    readyz_becomes(app, 503).await
}

async fn restore_socket(emulator: &Emulator) {
    emulator.post("/sockets/refuse", json!({"on": false})).await;
}

async fn reconnects(app: &TestApp) -> u64 {
    snapshot(app).await["counters"]["reconnects"]
        .as_u64()
        .expect("the reconnect counter")
}

/// The value of one series in the Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// The signed `onMessageAdded` webhook carrying `params`, posted to `app`.
async fn post_webhook(app: &TestApp, params: &[(String, String)]) -> u16 {
    let tokens = fixture_tokens();
    let url = format!("{}/webhooks/twilio/conversations", tokens.public_base_url);
    let signature = compute_signature(&tokens.primary_auth_token, &url, params);
    app.client
        .post(format!("{}/webhooks/twilio/conversations", app.address))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", signature)
        .body(serde_urlencoded::to_string(params).unwrap())
        .send()
        .await
        .expect("service answers")
        .status()
        .as_u16()
}

/// The webhook form of a message as the emulator stores it.
fn webhook_form(conversation: &str, message: &Value) -> Vec<(String, String)> {
    let text = |field: &str| message[field].as_str().unwrap_or_default().to_owned();
    vec![
        ("EventType".into(), "onMessageAdded".into()),
        ("AccountSid".into(), ACCOUNT_SID.into()),
        ("ChatServiceSid".into(), CHAT_SERVICE_SID.into()),
        ("ConversationSid".into(), conversation.into()),
        ("MessageSid".into(), text("sid")),
        ("Index".into(), message["index"].to_string()),
        ("Author".into(), text("author")),
        ("Body".into(), text("body")),
        ("Attributes".into(), text("attributes")),
        ("ParticipantSid".into(), text("participantSid")),
        ("DateCreated".into(), text("dateCreated")),
        ("Source".into(), "SMS".into()),
    ]
}

#[tokio::test]
async fn connects_syncs_and_publishes_history_then_live_messages_once() {
    let url = require_broker!();
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let (before, _) = emulator
        .message(&conversation, SMS_USER, "sent before the service started")
        .await;
    let exchange = new_exchange();
    let mut tap = BusTap::bind(&url, &exchange, INGRESS).await;
    let app = socket_app(&url, &emulator, &exchange, "websocket", &[]).await;

    let (message_id, envelope) = next_envelope(&mut tap).await;
    assert_eq!(message_id, format!("twilio:{before}"));
    assert_eq!(envelope["type"], "chat.message.v1");
    assert_eq!(envelope["message"]["id"], before.as_str());
    assert_eq!(
        envelope["message"]["text"],
        "sent before the service started"
    );
    assert_eq!(envelope["ingress"]["channel"], conversation.as_str());
    assert_eq!(envelope["egress"]["channel"], conversation.as_str());
    assert_eq!(envelope["identity"]["external"]["id"], SMS_USER);
    assert_eq!(
        envelope["identity"]["external"]["metadata"]["channelType"],
        "sms"
    );
    assert!(
        envelope["identity"]["external"]["metadata"]["participantSid"]
            .as_str()
            .is_some_and(|sid| sid.starts_with("MB"))
    );
    assert_eq!(envelope["metadata"]["twilio"]["index"], 0);

    let (live, _) = emulator.message(&conversation, SMS_USER, "live").await;
    let (message_id, envelope) = next_envelope(&mut tap).await;
    assert_eq!(message_id, format!("twilio:{live}"));
    assert_eq!(envelope["metadata"]["twilio"]["index"], 1);
    nothing_more(&mut tap).await;

    // /readyz reports the socket.
    let ready = readyz_becomes(&app, 200).await;
    assert_eq!(ready["connectors"]["twilio"]["ready"], true);
    assert_eq!(
        ready["connectors"]["twilio"]["detail"]["connection"]["state"],
        "connected"
    );

    // The snapshot: transport, connection, identity, token expiry, conversations with their
    // checkpoint; no secret, no token.
    let (_, debug) = get_json(&app, "/_debug/twilio").await;
    let transport = &debug["twilio"]["transport"];
    assert_eq!(transport["ingress"], "websocket");
    assert_eq!(transport["egress"], "rest");
    let socket = until(&app, "checkpoint at the live message", |socket| {
        conversation_entry(socket, &conversation)["checkpoint"] == 1
    })
    .await;
    assert_eq!(socket["connection"]["state"], "connected");
    assert_eq!(socket["identity"], BOT);
    assert!(socket["tokenExpiresAt"]
        .as_str()
        .is_some_and(|at| chrono::DateTime::parse_from_rfc3339(at).is_ok()));
    assert_eq!(socket["joined"], 1);
    assert_eq!(
        conversation_entry(&socket, &conversation)["status"],
        "joined"
    );
    let text = debug.to_string();
    assert!(!text.contains(API_KEY_SECRET), "{text}");
    assert!(!text.contains("eyJ"), "a token in the snapshot: {text}");

    // The metrics.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let series = |name: &str| metric(&metrics, &format!("ingress_egress_{name}"));
    assert_eq!(
        series("twilio_socket_connection_state{state=\"connected\"}"),
        Some(1.0)
    );
    assert_eq!(
        series("twilio_socket_connection_state{state=\"disconnected\"}"),
        Some(0.0)
    );
    assert!(series("twilio_socket_events_total{event=\"framesIn\"}").unwrap() > 0.0);
    assert!(series("twilio_socket_events_total{event=\"framesOut\"}").unwrap() > 0.0);
    assert_eq!(
        series("twilio_socket_events_total{event=\"reconnects\"}"),
        Some(0.0)
    );
    assert_eq!(
        series("twilio_socket_events_total{event=\"upstreamErrors\"}"),
        Some(0.0)
    );
    // The history message may have gone through the outbox when the socket was quicker
    // than the broker connection.
    let accepted = ["published", "outboxed"]
        .map(|outcome| {
            series(&format!(
                "twilio_socket_messages_total{{outcome=\"{outcome}\"}}"
            ))
            .unwrap_or(0.0)
        })
        .iter()
        .sum::<f64>();
    assert_eq!(accepted, 2.0);
    assert_eq!(
        series("twilio_socket_conversations{status=\"joined\"}"),
        Some(1.0)
    );
    assert_eq!(series("twilio_socket_participant_limit_reached"), Some(0.0));
    assert!(series("twilio_socket_token_expires_at_seconds").unwrap() > 1.7e9);
    // What the shipped dashboard and alerts read of the socket is exported.
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut watched = 0;
    for file in ["grafana/ingress-egress.json", "prometheus/alerts.yaml"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        for (at, _) in text.match_indices("ingress_egress_twilio_socket_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                metrics.contains(&format!("# TYPE {name} ")),
                "deploy/{file} reads {name}, which /metrics does not export"
            );
            watched += 1;
        }
    }
    assert!(watched >= 6, "the dashboard and alerts watch the socket");

    // The checkpoint is on disk under OUTBOX_DIR/websocket/.
    let file = app.outbox_dir.join("websocket/checkpoints.json");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stored: Option<Value> = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if stored.as_ref().map(|s| &s["conversations"][&conversation]) == Some(&json!(1)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stored:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn joins_a_conversation_it_was_invited_to_and_publishes_its_messages() {
    let url = require_broker!();
    let emulator = Emulator::start(&[]).await;
    let invited = emulator.conversation().await;
    emulator.add_sms_participant(&invited, SMS_USER).await;
    let (waiting, _) = emulator.message(&invited, SMS_USER, "anyone there?").await;
    emulator.invite(&invited, BOT).await;
    let exchange = new_exchange();
    let mut tap = BusTap::bind(&url, &exchange, INGRESS).await;
    let app = socket_app(&url, &emulator, &exchange, "websocket", &[]).await;

    // The message from before the join is published once the bot is in.
    let (message_id, _) = next_envelope(&mut tap).await;
    assert_eq!(message_id, format!("twilio:{waiting}"));
    let (_, details) = emulator
        .call("GET", &format!("/conversations/{invited}"), None)
        .await;
    assert!(details["participants"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["identity"] == BOT));
    until(&app, "joined", |socket| {
        conversation_entry(socket, &invited)["status"] == "joined"
    })
    .await;

    // An invitation while running is joined too.
    let later = emulator.conversation().await;
    emulator.add_sms_participant(&later, "+15559990000").await;
    emulator.invite(&later, BOT).await;
    until(&app, "the later conversation joined", |socket| {
        conversation_entry(socket, &later)["status"] == "joined"
            && conversation_entry(socket, &later)["catchingUp"] == false
    })
    .await;
    let (sid, _) = emulator.message(&later, "+15559990000", "hello").await;
    let (message_id, envelope) = next_envelope(&mut tap).await;
    assert_eq!(message_id, format!("twilio:{sid}"));
    assert_eq!(envelope["ingress"]["channel"], later.as_str());
    nothing_more(&mut tap).await;
    let socket = snapshot(&app).await;
    assert_eq!(socket["joined"], 2);
    assert!(socket["counters"]["joins"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn a_socket_message_becomes_the_envelope_the_webhook_builds() {
    let url = require_broker!();
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let exchange = new_exchange();
    let mut tap = BusTap::bind(&url, &exchange, INGRESS).await;
    let _socket_app = socket_app(&url, &emulator, &exchange, "websocket", &[]).await;
    let (sid, index) = emulator
        .message_with(
            &conversation,
            json!({"author": SMS_USER, "body": "Where is my order #1234?", "attributes": {"priority": "high"}}),
        )
        .await;
    let (socket_id, from_socket) = next_envelope(&mut tap).await;

    // What the socket published carries exactly the emulator's message.
    let stored = emulator.messages(&conversation).await;
    let stored = stored.iter().find(|m| m["sid"] == sid.as_str()).unwrap();
    let raw = &from_socket["message"]["rawPlatformPayload"];
    assert_eq!(raw["EventType"], "onMessageAdded");
    assert_eq!(raw["MessageSid"], sid.as_str());
    assert_eq!(raw["ConversationSid"], conversation.as_str());
    assert_eq!(raw["Index"], index.to_string());
    assert_eq!(raw["Author"], stored["author"]);
    assert_eq!(raw["Body"], stored["body"]);
    assert_eq!(raw["Attributes"], stored["attributes"]);
    assert_eq!(raw["ParticipantSid"], stored["participantSid"]);
    assert_eq!(raw["DateCreated"], stored["dateCreated"]);
    assert_eq!(raw["AccountSid"], ACCOUNT_SID);
    assert_eq!(raw["ChatServiceSid"], CHAT_SERVICE_SID);

    // The webhook path, given the same fields, publishes the same envelope.
    let hook_exchange = new_exchange();
    let mut hook_tap = BusTap::bind(&url, &hook_exchange, INGRESS).await;
    let hook_app = spawn_app(Some(&url), &[("AMQP_EXCHANGE", hook_exchange.as_str())]).await;
    let params: Vec<(String, String)> = raw
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(post_webhook(&hook_app, &params).await, 200);
    let (hook_id, from_webhook) = next_envelope(&mut hook_tap).await;
    assert_eq!(socket_id, hook_id);
    assert_eq!(from_socket["correlationId"], from_webhook["correlationId"]);
    let without_arrival_time = |envelope: &Value| {
        let mut envelope = envelope.clone();
        envelope["ingress"]
            .as_object_mut()
            .unwrap()
            .remove("ingressAt");
        // Each arrival is its own trace, socket message or webhook request.
        assert!(envelope["traceId"].is_string(), "{envelope}");
        envelope.as_object_mut().unwrap().remove("traceId");
        envelope
    };
    assert_eq!(
        without_arrival_time(&from_socket),
        without_arrival_time(&from_webhook)
    );
    assert_eq!(
        from_socket["metadata"]["twilio"]["attributes"]["priority"],
        "high"
    );
}

#[tokio::test]
async fn the_bots_own_messages_are_not_published() {
    let url = require_broker!();
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let exchange = new_exchange();
    let mut tap = BusTap::bind(&url, &exchange, INGRESS).await;
    let app = socket_app(&url, &emulator, &exchange, "websocket", &[]).await;
    until(&app, "synced", |socket| {
        conversation_entry(socket, &conversation)["catchingUp"] == false
    })
    .await;
    emulator
        .message(&conversation, BOT, "authored by the bot's identity")
        .await;
    emulator
        .message_with(
            &conversation,
            json!({"author": "system", "body": "posted by egress", "attributes": {"origin": "ingress-egress", "key": "k:0"}}),
        )
        .await;
    let (user, user_index) = emulator.message(&conversation, SMS_USER, "a user").await;
    let (message_id, _) = next_envelope(&mut tap).await;
    assert_eq!(message_id, format!("twilio:{user}"));
    nothing_more(&mut tap).await;
    let socket = until(&app, "checkpoint over everything", |socket| {
        conversation_entry(socket, &conversation)["checkpoint"] == user_index
    })
    .await;
    assert_eq!(socket["counters"]["ownMessagesSkipped"], 2);
}

#[tokio::test]
async fn a_token_about_to_expire_is_renewed_on_the_same_socket() {
    let url = require_broker!();
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let exchange = new_exchange();
    let mut tap = BusTap::bind(&url, &exchange, INGRESS).await;
    let app = socket_app(&url, &emulator, &exchange, "websocket", &[]).await;
    let before = snapshot(&app).await["tokenExpiresAt"].clone();
    emulator.post("/tokens/about-to-expire", json!({})).await;
    emulator
        .until("the token was updated", |state| {
            state["tokenUpdates"].as_u64().unwrap_or(0) >= 1
        })
        .await;
    let (sid, _) = emulator
        .message(&conversation, SMS_USER, "after the renewal")
        .await;
    let (message_id, _) = next_envelope(&mut tap).await;
    assert_eq!(message_id, format!("twilio:{sid}"));
    nothing_more(&mut tap).await;
    assert_eq!(emulator.state().await["inits"], 1);
    let socket = snapshot(&app).await;
    assert_eq!(socket["counters"]["reconnects"], 0);
    assert_eq!(socket["counters"]["tokenRenewals"], 1);
    assert_ne!(socket["tokenExpiresAt"], before);
}

#[tokio::test]
async fn an_expired_token_reconnects_with_a_new_one_and_loses_nothing() {
    let url = require_broker!();
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let exchange = new_exchange();
    let mut tap = BusTap::bind(&url, &exchange, INGRESS).await;
    let app = socket_app(&url, &emulator, &exchange, "websocket", &[]).await;
    emulator.post("/tokens/expire", json!({})).await;
    let (during, _) = emulator
        .message(&conversation, SMS_USER, "while the token expires")
        .await;
    emulator
        .until("a new init", |state| {
            state["inits"].as_u64().unwrap_or(0) >= 2
        })
        .await;
    readyz_becomes(&app, 200).await;
    let (after, _) = emulator
        .message(&conversation, SMS_USER, "after the expiry")
        .await;
    let (first, _) = next_envelope(&mut tap).await;
    let (second, _) = next_envelope(&mut tap).await;
    assert_eq!(
        (first, second),
        (format!("twilio:{during}"), format!("twilio:{after}"))
    );
    nothing_more(&mut tap).await;
    assert!(reconnects(&app).await >= 1);
}

#[tokio::test]
async fn three_messages_during_a_drop_are_published_once_after_the_reconnect() {
    let url = require_broker!();
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let exchange = new_exchange();
    let mut tap = BusTap::bind(&url, &exchange, INGRESS).await;
    let app = socket_app(&url, &emulator, &exchange, "websocket", &[]).await;
    let (zero, _) = emulator.message(&conversation, SMS_USER, "m0").await;
    assert_eq!(next_envelope(&mut tap).await.0, format!("twilio:{zero}"));

    let down = cut_socket(&emulator, &app).await;
    assert_eq!(down["connectors"]["twilio"]["ready"], false);
    let mut expected = Vec::new();
    for body in ["m1", "m2", "m3"] {
        let (sid, _) = emulator.message(&conversation, SMS_USER, body).await;
        expected.push(format!("twilio:{sid}"));
    }
    restore_socket(&emulator).await;
    let mut published = Vec::new();
    for _ in 0..3 {
        published.push(next_envelope(&mut tap).await.0);
    }
    assert_eq!(published, expected);
    nothing_more(&mut tap).await;
    readyz_becomes(&app, 200).await;
    assert!(reconnects(&app).await >= 1);
}

#[tokio::test]
async fn a_restart_resumes_from_the_checkpoint() {
    let url = require_broker!();
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let (one, _) = emulator.message(&conversation, SMS_USER, "one").await;
    let (two, _) = emulator.message(&conversation, SMS_USER, "two").await;
    let exchange = new_exchange();
    let mut tap = BusTap::bind(&url, &exchange, INGRESS).await;
    let mut first = socket_app(&url, &emulator, &exchange, "websocket", &[]).await;
    assert_eq!(next_envelope(&mut tap).await.0, format!("twilio:{one}"));
    assert_eq!(next_envelope(&mut tap).await.0, format!("twilio:{two}"));
    until(&first, "both committed", |socket| {
        conversation_entry(socket, &conversation)["checkpoint"] == 1
    })
    .await;
    first.stop().await;
    emulator
        .until("the socket closed", |state| {
            state["sessions"]
                .as_array()
                .is_some_and(|sessions| sessions.iter().all(|s| s["connected"] == false))
        })
        .await;

    // While the service is away.
    let (three, _) = emulator.message(&conversation, SMS_USER, "three").await;
    let (four, _) = emulator.message(&conversation, SMS_USER, "four").await;
    let outbox = first.outbox_dir.display().to_string();
    let second = socket_app(
        &url,
        &emulator,
        &exchange,
        "websocket",
        &[("OUTBOX_DIR", outbox.as_str())],
    )
    .await;
    assert_eq!(next_envelope(&mut tap).await.0, format!("twilio:{three}"));
    assert_eq!(next_envelope(&mut tap).await.0, format!("twilio:{four}"));
    nothing_more(&mut tap).await;
    let socket = until(&second, "resumed", |socket| {
        conversation_entry(socket, &conversation)["checkpoint"] == 3
    })
    .await;
    assert_eq!(conversation_entry(&socket, &conversation)["lastEmitted"], 3);
}

#[tokio::test]
async fn the_participant_cap_is_reported() {
    let url = require_broker!();
    let emulator = Emulator::start(&[("EMULATOR_PARTICIPANT_LIMIT", "1")]).await;
    let joined = emulator.joined_conversation().await;
    let invited = emulator.conversation().await;
    emulator.invite(&invited, BOT).await;
    let exchange = new_exchange();
    let app = socket_app(&url, &emulator, &exchange, "websocket", &[]).await;
    // Twilio refuses the join with 50214; the service says so in the snapshot and a metric.
    let socket = until(&app, "the cap reported", |socket| {
        !socket["participantLimitReached"].is_null()
    })
    .await;
    let entry = conversation_entry(&socket, &invited);
    assert_eq!(entry["status"], "join_failed");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("maximum number of conversations"),
        "{entry}"
    );
    assert_eq!(conversation_entry(&socket, &joined)["status"], "joined");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            "ingress_egress_twilio_socket_participant_limit_reached"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "ingress_egress_twilio_socket_conversations{status=\"join_failed\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn with_both_transports_each_message_is_published_once() {
    let url = require_broker!();
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let exchange = new_exchange();
    let mut tap = BusTap::bind(&url, &exchange, INGRESS).await;
    let app = socket_app(&url, &emulator, &exchange, "both", &[]).await;

    // The socket first, then Twilio's webhook for the same message.
    let (first, _) = emulator
        .message(&conversation, SMS_USER, "socket first")
        .await;
    assert_eq!(next_envelope(&mut tap).await.0, format!("twilio:{first}"));
    let stored = emulator.messages(&conversation).await;
    assert_eq!(
        post_webhook(&app, &webhook_form(&conversation, &stored[0])).await,
        200
    );
    nothing_more(&mut tap).await;

    // The webhook first (the socket is away), then the socket catching up.
    cut_socket(&emulator, &app).await;
    let (second, _) = emulator
        .message(&conversation, SMS_USER, "webhook first")
        .await;
    let stored = emulator.messages(&conversation).await;
    assert_eq!(
        post_webhook(&app, &webhook_form(&conversation, &stored[1])).await,
        200
    );
    assert_eq!(next_envelope(&mut tap).await.0, format!("twilio:{second}"));
    restore_socket(&emulator).await;
    readyz_becomes(&app, 200).await;
    until(&app, "the socket caught up", |socket| {
        conversation_entry(socket, &conversation)["checkpoint"] == 1
    })
    .await;
    nothing_more(&mut tap).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            "ingress_egress_twilio_socket_messages_total{outcome=\"duplicate\"}"
        ),
        Some(1.0)
    );
}

/// An app whose replies to conversations go over the socket; REST points nowhere, so only
/// the socket can deliver them.
async fn socket_egress_app(url: &str, emulator: &Emulator, exchange: &str) -> TestApp {
    socket_app(
        url,
        emulator,
        exchange,
        "websocket",
        &[
            ("TWILIO_EGRESS_TRANSPORT", "websocket"),
            ("TWILIO_CONVERSATIONS_BASE_URL", "http://127.0.0.1:9"),
            ("TWILIO_MAX_SEND_RATE", "100"),
        ],
    )
    .await
}

/// An egress event replying `text` in `conversation`.
pub fn reply_in(conversation: &str, text: &str) -> Value {
    json!({
        "v": "2",
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "type": "chat.message.v1",
        "ingress": {"ingressAt": "2026-01-01T00:00:00Z", "source": "ingress.twilio", "connector": "twilio", "channel": conversation},
        "identity": {"external": {"id": SMS_USER, "platform": "twilio"}},
        "egress": {"destination": "internal.egress.v1", "connector": "twilio", "type": "chat", "channel": conversation},
        "routing": {"stage": "responded", "slip": [], "history": []},
        "message": {"id": "bot-reply-1", "role": "assistant", "text": text}
    })
}

/// The one message the bot posted, checked to carry the origin and the part's key.
async fn the_bots_only_message(emulator: &Emulator, conversation: &str) -> Value {
    let stored = emulator.messages(conversation).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let posted = stored[0].clone();
    assert_eq!(posted["author"], BOT);
    let attributes: Value = serde_json::from_str(posted["attributes"].as_str().unwrap()).unwrap();
    assert_eq!(attributes["origin"], "ingress-egress");
    assert!(attributes["key"]
        .as_str()
        .is_some_and(|key| !key.is_empty()));
    posted
}

#[tokio::test]
async fn replies_to_conversations_are_posted_over_the_socket() {
    let url = require_broker!();
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let exchange = new_exchange();
    let mut ingress_tap = BusTap::bind(&url, &exchange, INGRESS).await;
    let mut status_tap = BusTap::bind(&url, &exchange, "internal.egress.status.v1").await;
    let _app = socket_egress_app(&url, &emulator, &exchange).await;
    let reply = reply_in(&conversation, "Your order ships today.");
    publish(&url, &exchange, "internal.egress.v1", "reply-1", &reply).await;

    let (_, status) = status_tap.next_json().await;
    assert_eq!(status["status"], "sent", "{status}");
    let posted = the_bots_only_message(&emulator, &conversation).await;
    assert_eq!(posted["body"], "Your order ships today.");
    assert_eq!(status["providerSid"], posted["sid"]);
    // The bot's reply is not published back as an inbound message.
    nothing_more(&mut ingress_tap).await;
}

#[tokio::test]
async fn a_reply_whose_answer_was_lost_is_found_not_posted_twice() {
    let url = require_broker!();
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let exchange = new_exchange();
    let mut status_tap = BusTap::bind(&url, &exchange, "internal.egress.status.v1").await;
    let app = socket_egress_app(&url, &emulator, &exchange).await;
    // Twilio creates the message, but the socket drops before its answer arrives.
    emulator
        .post(
            "/faults",
            json!({"lostReplies": 1, "match": format!("/Conversations/{conversation}/Messages")}),
        )
        .await;
    let reply = reply_in(&conversation, "Posted once, whatever happens.");
    publish(&url, &exchange, "internal.egress.v1", "reply-lost", &reply).await;

    let (_, status) = status_tap.next_json().await;
    assert_eq!(status["status"], "sent", "{status}");
    assert_eq!(status["attempts"], 2, "{status}");
    // Found through the socket by the part's key, not posted again.
    assert_eq!(
        status["partDetails"][0]["resolvedBy"], "attributes",
        "{status}"
    );
    let posted = the_bots_only_message(&emulator, &conversation).await;
    assert_eq!(status["providerSid"], posted["sid"]);
    let state = emulator.state().await;
    assert_eq!(state["pendingFaults"], 0);
    assert_eq!(
        Emulator::upstream_count(
            &state,
            &format!("POST aim.us1.twilio.com/Client/v2/Conversations/{conversation}/Messages")
        ),
        1
    );
    assert!(reconnects(&app).await >= 1);
}

#[tokio::test]
async fn missing_socket_credentials_stop_start_up_naming_the_variable() {
    let mut vars = base_vars(None);
    vars.insert(
        "OUTBOX_DIR".into(),
        tempfile::tempdir().unwrap().path().display().to_string(),
    );
    vars.insert("TWILIO_TRANSPORT".into(), "websocket".into());
    vars.insert("TWILIO_API_KEY".into(), API_KEY_SID.into());
    vars.insert("TWILIO_API_SECRET".into(), API_KEY_SECRET.into());
    vars.insert("TWILIO_CHAT_SERVICE_SID".into(), CHAT_SERVICE_SID.into());
    let settings = Settings::from_vars(vars).expect("core settings are valid");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let error = match Application::build_with_listener(settings, listener).await {
        Ok(_) => panic!("start-up must fail without TWILIO_IDENTITY"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("TWILIO_IDENTITY"), "{error}");
    assert!(error.contains("TWILIO_TRANSPORT=websocket"), "{error}");
    assert_eq!(error.lines().count(), 1, "{error}");
}

/// Publishes `body` with confirms, as an upstream service would.
pub async fn publish(url: &str, exchange: &str, routing_key: &str, message_id: &str, body: &Value) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(body).unwrap(),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(message_id.into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "published".into()).await;
}

#[tokio::test]
async fn closed_conversations_are_left_to_make_room_when_the_policy_is_on() {
    let url = require_broker!();
    let emulator = Emulator::start(&[("EMULATOR_PARTICIPANT_LIMIT", "2")]).await;
    let closed = emulator.joined_conversation().await;
    let recently_closed = emulator.joined_conversation().await;
    let old = (chrono::Utc::now() - chrono::Duration::days(10)).to_rfc3339();
    let recent = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    for (sid, at) in [(&closed, &old), (&recently_closed, &recent)] {
        emulator
            .post(
                &format!("/conversations/{sid}/state"),
                json!({"state": "closed", "dateUpdated": at}),
            )
            .await;
    }
    let invited = emulator.conversation().await;
    emulator.add_sms_participant(&invited, SMS_USER).await;
    emulator.invite(&invited, BOT).await;
    let exchange = new_exchange();
    let mut tap = BusTap::bind(&url, &exchange, INGRESS).await;
    let app = socket_app(
        &url,
        &emulator,
        &exchange,
        "websocket",
        &[("TWILIO_LEAVE_CLOSED_AFTER_DAYS", "7")],
    )
    .await;

    // The conversation closed ten days ago is left; the one closed yesterday is kept; the
    // invitation that found the identity at its cap is joined in the freed place.
    let socket = until(&app, "left and joined", |socket| {
        conversation_entry(socket, &closed).is_null()
            && conversation_entry(socket, &invited)["status"] == "joined"
    })
    .await;
    assert_eq!(
        conversation_entry(&socket, &recently_closed)["status"],
        "joined"
    );
    assert_eq!(socket["counters"]["leaves"], 1);
    assert!(socket["participantLimitReached"].is_null(), "{socket}");
    let (_, details) = emulator
        .call("GET", &format!("/conversations/{closed}"), None)
        .await;
    assert!(!details["participants"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["identity"] == BOT));
    until(&app, "the invitation synced", |socket| {
        conversation_entry(socket, &invited)["catchingUp"] == false
    })
    .await;
    let (sid, _) = emulator
        .message(&invited, SMS_USER, "now there is room")
        .await;
    assert_eq!(next_envelope(&mut tap).await.0, format!("twilio:{sid}"));
    nothing_more(&mut tap).await;
}
