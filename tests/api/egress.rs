//! Egress end to end: egress events published to a real RabbitMQ, delivered by the app to a
//! fake Twilio that checks every request against Twilio's OpenAPI documents.

use std::{collections::BTreeSet, time::Duration};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::{
    egress_support::{
        declare_queue_of_type, delete_queue, egress_app, fake_twilio, reply_to, EgressPublisher,
        FROM, IDENTITY, STATUS_CALLBACK,
    },
    fake_twilio::{FakeTwilio, RecordedRequest, Reply, Route},
    helpers::{fixture_tokens, spawn_app_not_ready, BusTap, TestApp},
    require_broker,
};

const WAIT: Duration = Duration::from_secs(20);
const CONVERSATION: &str = "CH0123456789abcdef0123456789abcdef";

struct Rig {
    url: String,
    app: TestApp,
    fake: FakeTwilio,
    publisher: EgressPublisher,
    status: BusTap,
    dead: BusTap,
    seen_status: Vec<Value>,
    seen_dead: Vec<Value>,
}

/// The message on `tap` for `event`'s correlation id, looking at `seen` first.
async fn find(tap: &mut BusTap, seen: &mut Vec<Value>, event: &Value) -> Value {
    let id = event["correlationId"].as_str().unwrap().to_owned();
    if let Some(index) = seen.iter().position(|m| m["correlationId"] == id.as_str()) {
        return seen.remove(index);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let delivery = tap
            .next(left)
            .await
            .unwrap_or_else(|| panic!("no message for correlation id {id} within {WAIT:?}"));
        let message: Value = serde_json::from_slice(&delivery.data).expect("JSON body");
        if message["correlationId"] == id.as_str() {
            return message;
        }
        seen.push(message);
    }
}

impl Rig {
    async fn start(url: &str, extra: &[(&str, &str)]) -> Rig {
        let fake = fake_twilio().await;
        let app = egress_app(url, &fake, extra).await;
        let status = app.tap("internal.egress.status.v1").await;
        let dead = app.tap("internal.deadletter.v1").await;
        let publisher = EgressPublisher::new(&app).await;
        Rig {
            url: url.to_owned(),
            app,
            fake,
            publisher,
            status,
            dead,
            seen_status: Vec::new(),
            seen_dead: Vec::new(),
        }
    }

    /// The status event for `event` (others seen meanwhile are kept for later calls).
    async fn status_of(&mut self, event: &Value) -> Value {
        find(&mut self.status, &mut self.seen_status, event).await
    }

    /// The dead letter for `event` (others seen meanwhile are kept for later calls).
    async fn dead_letter_of(&mut self, event: &Value) -> Value {
        find(&mut self.dead, &mut self.seen_dead, event).await
    }

    async fn finish(self) {
        self.fake.assert_no_violations();
        delete_queue(&self.url, &self.app.egress_queue).await;
    }
}

fn basic_auth_header() -> String {
    let tokens = fixture_tokens();
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            tokens.account_sid, tokens.primary_auth_token
        ))
    )
}

fn bodies(requests: &[RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| r.param("Body").unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn an_sms_reply_becomes_one_conformant_twilio_message_and_a_sent_status() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    let readiness: Value = rig.app.get("/readyz").await.json().await.unwrap();
    assert_eq!(readiness["egressConsumer"], true, "{readiness}");
    // Without REDIS_URL the shared store is absent, not `null`.
    assert!(readiness.get("redis").is_none(), "{readiness}");

    let event = reply_to("+14155550100", "Hello from the bot");
    rig.publisher.publish(&event).await;
    let status = rig.status_of(&event).await;

    let requests = rig.fake.requests_to(Route::Messages);
    assert_eq!(requests.len(), 1, "exactly one request");
    let request = &requests[0];
    let tokens = fixture_tokens();
    assert_eq!(request.path_params["AccountSid"], tokens.account_sid);
    assert_eq!(request.param("To"), Some("+14155550100"));
    assert_eq!(request.param("From"), Some(FROM));
    assert_eq!(request.param("Body"), Some("Hello from the bot"));
    assert_eq!(request.param("MessagingServiceSid"), None);
    let callback = url::Url::parse(request.param("StatusCallback").unwrap()).unwrap();
    assert!(callback.as_str().starts_with(STATUS_CALLBACK), "{callback}");
    let correlation = event["correlationId"].as_str().unwrap();
    assert!(callback
        .query_pairs()
        .any(|(k, v)| k == "correlationId" && v == correlation));
    assert_eq!(
        request.header("authorization"),
        Some(basic_auth_header().as_str())
    );
    assert!(request
        .idempotency_token
        .as_deref()
        .is_some_and(|t| !t.is_empty()));
    assert_eq!(rig.fake.created(Route::Messages).len(), 1);

    assert_eq!(status["status"], "sent", "{status}");
    assert_eq!(status["target"], "+14155550100");
    assert_eq!(status["attempts"], 1);
    assert_eq!(status["parts"], 1);
    assert_eq!(status["segments"], 1);
    assert_eq!(status["partDetails"][0]["encoding"], "GSM-7");
    assert!(
        status["providerSid"].as_str().unwrap().starts_with("SM"),
        "{status}"
    );

    // Acked: nothing comes again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.fake.requests_to(Route::Messages).len(), 1);

    // The part is in this instance's state journal, and the snapshot says how much it holds.
    let snapshot: Value = rig.app.get("/_debug/twilio").await.json().await.unwrap();
    let store = &snapshot["stateStore"];
    assert_eq!(store["kind"], "file", "{store}");
    assert!(store["entries"].as_u64().is_some_and(|n| n >= 1), "{store}");
    assert!(
        store["journalBytes"].as_u64().is_some_and(|n| n > 0),
        "{store}"
    );
    assert!(
        store["dir"]
            .as_str()
            .is_some_and(|dir| dir.ends_with("state")),
        "{store}"
    );
    rig.finish().await;
}

#[tokio::test]
async fn mms_whatsapp_conversation_and_dm_targets_use_the_right_api() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;

    // MMS: repeated MediaUrl.
    let mut mms = reply_to("+14155550101", "Here you go");
    mms["message"]["media"] = json!([
        {"url": "https://example.com/a.jpg", "contentType": "image/jpeg"},
        {"url": "https://example.com/b.png", "contentType": "image/png"}
    ]);
    rig.publisher.publish(&mms).await;
    let status = rig.status_of(&mms).await;
    assert_eq!(status["status"], "sent", "{status}");
    let request = rig
        .fake
        .requests_to(Route::Messages)
        .into_iter()
        .find(|r| r.param("To") == Some("+14155550101"))
        .expect("MMS request");
    assert_eq!(
        request.params_named("MediaUrl"),
        vec!["https://example.com/a.jpg", "https://example.com/b.png"]
    );
    assert_eq!(request.param("Body"), Some("Here you go"));

    // WhatsApp: the sender gets the whatsapp: prefix too.
    let mut whatsapp = reply_to("whatsapp:+14155550102", "Hola");
    whatsapp["egress"]["metadata"]["twilio"]["from"] = json!("whatsapp:+15005550006");
    rig.publisher.publish(&whatsapp).await;
    assert_eq!(rig.status_of(&whatsapp).await["status"], "sent");
    let request = rig
        .fake
        .requests_to(Route::Messages)
        .into_iter()
        .find(|r| r.param("To") == Some("whatsapp:+14155550102"))
        .expect("WhatsApp request");
    assert_eq!(request.param("From"), Some("whatsapp:+15005550006"));

    // Conversation: Conversations API, as the bot identity.
    let chat = reply_to(CONVERSATION, "Hi in the conversation");
    rig.publisher.publish(&chat).await;
    let status = rig.status_of(&chat).await;
    assert_eq!(status["status"], "sent", "{status}");
    assert!(
        status["providerSid"].as_str().unwrap().starts_with("IM"),
        "{status}"
    );
    let requests = rig.fake.requests_to(Route::ConversationMessages);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path_params["ConversationSid"], CONVERSATION);
    assert_eq!(requests[0].param("Author"), Some(IDENTITY));
    assert_eq!(requests[0].param("Body"), Some("Hi in the conversation"));
    assert!(requests[0].idempotency_token.is_some());

    // dm: to the person (identity.external.id), not the conversation.
    let mut dm = reply_to(CONVERSATION, "Just for you");
    dm["egress"]["type"] = json!("dm");
    dm["identity"]["external"]["id"] = json!("+14155550103");
    rig.publisher.publish(&dm).await;
    let status = rig.status_of(&dm).await;
    assert_eq!(status["target"], "+14155550103", "{status}");
    let request = rig
        .fake
        .requests_to(Route::Messages)
        .into_iter()
        .find(|r| r.param("Body") == Some("Just for you"))
        .expect("dm request");
    assert_eq!(request.param("To"), Some("+14155550103"));
    assert_eq!(rig.fake.requests_to(Route::ConversationMessages).len(), 1);
    rig.finish().await;
}

#[tokio::test]
async fn the_selected_or_else_best_candidate_is_what_is_sent() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    let candidate =
        |id: &str, status: &str, priority: i64, confidence: f64, at: &str, text: &str| {
            json!({"id": id, "kind": "text", "source": "llm", "createdAt": at, "status": status,
               "priority": priority, "confidence": confidence, "text": text})
        };
    let t0 = "2026-01-01T00:00:00Z";
    let t1 = "2026-01-01T00:00:01Z";

    let mut selected = reply_to("+14155550110", "message text is ignored");
    selected["candidates"] = json!([
        candidate(
            "a",
            "proposed",
            0,
            0.99,
            t0,
            "better ranked but only proposed"
        ),
        candidate("b", "selected", 5, 0.10, t1, "the selected one"),
    ]);
    let mut ranked = reply_to("+14155550111", "message text is ignored");
    ranked["candidates"] = json!([
        candidate("a", "proposed", 2, 0.99, t0, "priority 2"),
        candidate("b", "proposed", 1, 0.50, t1, "priority 1, lower confidence"),
        candidate(
            "c",
            "proposed",
            1,
            0.90,
            t1,
            "priority 1, higher confidence"
        ),
        candidate("d", "rejected", 0, 1.00, t0, "rejected"),
    ]);
    rig.publisher.publish(&selected).await;
    rig.publisher.publish(&ranked).await;
    rig.status_of(&selected).await;
    rig.status_of(&ranked).await;

    let sent = rig.fake.requests_to(Route::Messages);
    let body_to = |to: &str| {
        sent.iter()
            .find(|r| r.param("To") == Some(to))
            .and_then(|r| r.param("Body"))
            .map(str::to_owned)
    };
    assert_eq!(body_to("+14155550110").as_deref(), Some("the selected one"));
    assert_eq!(
        body_to("+14155550111").as_deref(),
        Some("priority 1, higher confidence")
    );
    rig.finish().await;
}

/// Segments of a GSM-7 text made of basic characters only / of a UCS-2 text without
/// surrogates (independent of the implementation's packing).
fn segments(len: usize, single: usize, multi: usize) -> u64 {
    if len <= single {
        1
    } else {
        len.div_ceil(multi) as u64
    }
}

#[tokio::test]
async fn long_text_is_split_into_ordered_idempotent_parts_with_segment_counts() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    let one = format!("{}end one.", "Alpha beta gamma. ".repeat(38));
    let two = format!("{}end two.", "Delta epsilon zeta. ".repeat(34));
    let three = format!("{}конец.", "Привет мир и всем. ".repeat(36));
    let text = format!("{one} {two} {three}");
    assert!(text.chars().count() > 1600);
    let event = reply_to("+14155550120", &text);
    rig.publisher.publish(&event).await;
    let status = rig.status_of(&event).await;
    assert_eq!(status["status"], "sent", "{status}");

    let requests = rig.fake.requests_to(Route::Messages);
    let parts = bodies(&requests);
    assert!(parts.len() >= 2, "{parts:?}");
    for part in &parts {
        assert!(part.encode_utf16().count() <= 1600);
    }
    // In order, and nothing lost but the whitespace at the cuts.
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(squash(&parts.join(" ")), squash(&text));
    // Cuts at sentence ends.
    for part in &parts[..parts.len() - 1] {
        assert!(part.ends_with('.'), "{part:?}");
    }
    let tokens: BTreeSet<_> = requests
        .iter()
        .map(|r| r.idempotency_token.clone())
        .collect();
    assert_eq!(tokens.len(), parts.len(), "one token per part");
    assert_eq!(rig.fake.created(Route::Messages).len(), parts.len());

    assert_eq!(status["parts"], parts.len());
    let details = status["partDetails"].as_array().unwrap();
    let mut total = 0;
    for (index, (detail, body)) in details.iter().zip(&parts).enumerate() {
        assert_eq!(detail["index"], index);
        let chars = body.chars().count();
        assert_eq!(detail["characters"], chars);
        let gsm = body.is_ascii();
        let expected = if gsm {
            assert_eq!(detail["encoding"], "GSM-7");
            segments(chars, 160, 153)
        } else {
            assert_eq!(detail["encoding"], "UCS-2");
            segments(chars, 70, 67)
        };
        assert_eq!(detail["segments"], expected, "part {index}");
        total += expected;
    }
    assert_eq!(status["segments"], total);
    assert_eq!(details.last().unwrap()["encoding"], "UCS-2");
    rig.finish().await;
}

async fn retried_once_then_accepted(first: Reply) {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    rig.fake.enqueue(Route::Messages, first);
    let event = reply_to("+14155550130", "Try again");
    rig.publisher.publish(&event).await;
    let status = rig.status_of(&event).await;
    assert_eq!(status["status"], "sent", "{status}");
    assert_eq!(status["attempts"], 2);

    let requests = rig.fake.requests_to(Route::Messages);
    assert_eq!(requests.len(), 2);
    assert!(requests[0].idempotency_token.is_some());
    assert_eq!(
        requests[0].idempotency_token, requests[1].idempotency_token,
        "every attempt carries the same token"
    );
    assert_eq!(requests[0].params, requests[1].params);
    assert_eq!(
        rig.fake.created(Route::Messages).len(),
        1,
        "exactly one message"
    );
    rig.finish().await;
}

#[tokio::test]
async fn a_429_then_200_sends_exactly_one_message_with_one_token() {
    retried_once_then_accepted(Reply::too_many_requests(Some(1))).await;
}

#[tokio::test]
async fn a_500_then_200_sends_exactly_one_message_with_one_token() {
    retried_once_then_accepted(Reply::status(500)).await;
}

#[tokio::test]
async fn a_500_after_twilio_created_the_message_is_looked_up_not_sent_again() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    // Realistic Messages API: the idempotency token does not stop a second create.
    rig.fake
        .enqueue(Route::Messages, Reply::CreatedButFailed { status: 500 });
    let to = "+14155550133";
    let event = reply_to(to, "Created, but we saw a 500");
    rig.publisher.publish(&event).await;
    let status = rig.status_of(&event).await;
    assert_eq!(status["status"], "sent", "{status}");

    let messages = rig.fake.messages();
    assert_eq!(messages.len(), 1, "exactly one message: {messages:?}");
    assert_eq!(rig.fake.created(Route::Messages).len(), 1);
    assert_eq!(rig.fake.requests_to(Route::Messages).len(), 1, "no resend");
    assert_eq!(status["providerSid"], messages[0]["sid"], "{status}");
    assert_eq!(status["providerSids"], json!([messages[0]["sid"]]));

    assert_eq!(
        status["partDetails"][0]["resolvedBy"], "listing",
        "{status}"
    );

    let lookups = rig.fake.requests_to(Route::ListMessages);
    assert_eq!(lookups.len(), 1, "one lookup before the retry");
    assert_eq!(lookups[0].query_param("To"), Some(to));
    assert_eq!(lookups[0].query_param("From"), Some(FROM));
    // date_sent is null while a message is queued: a DateSent filter would miss it.
    assert!(lookups[0].query_param("DateSent>").is_none());
    assert!(lookups[0].query_param("DateSent").is_none());
    assert_eq!(lookups[0].query_param("PageSize"), Some("50"));
    assert!(lookups[0].idempotency_token.is_none());
    rig.finish().await;
}

#[tokio::test]
async fn a_plain_500_is_looked_up_then_sent_exactly_once() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    rig.fake.enqueue(Route::Messages, Reply::status(500));
    let event = reply_to("+14155550134", "Nothing created the first time");
    rig.publisher.publish(&event).await;
    let status = rig.status_of(&event).await;
    assert_eq!(status["status"], "sent", "{status}");
    assert_eq!(status["attempts"], 2);

    assert_eq!(rig.fake.requests_to(Route::ListMessages).len(), 1);
    assert_eq!(rig.fake.requests_to(Route::Messages).len(), 2, "resent");
    let messages = rig.fake.messages();
    assert_eq!(messages.len(), 1, "exactly one message: {messages:?}");
    assert_eq!(status["providerSid"], messages[0]["sid"], "{status}");
    rig.finish().await;
}

#[tokio::test]
async fn a_429_is_retried_without_a_lookup() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    rig.fake
        .enqueue(Route::Messages, Reply::too_many_requests(Some(1)));
    let event = reply_to("+14155550135", "Rejected, not ambiguous");
    rig.publisher.publish(&event).await;
    let status = rig.status_of(&event).await;
    assert_eq!(status["status"], "sent", "{status}");
    assert_eq!(rig.fake.requests_to(Route::ListMessages).len(), 0);
    assert_eq!(rig.fake.messages().len(), 1);
    rig.finish().await;
}

#[tokio::test]
async fn retries_are_bounded_then_dead_lettered() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[("TWILIO_MAX_SEND_ATTEMPTS", "3")]).await;
    for _ in 0..3 {
        rig.fake.enqueue(Route::Messages, Reply::status(503));
    }
    let event = reply_to("+14155550131", "Never arrives");
    rig.publisher.publish(&event).await;
    let dead = rig.dead_letter_of(&event).await;
    assert_eq!(dead["reason"], "retries_exhausted", "{dead}");
    assert_eq!(dead["attempts"], 3);
    assert_eq!(dead["httpStatus"], 503);
    assert_eq!(dead["originalEvent"], event);
    let status = rig.status_of(&event).await;
    assert_eq!(status["status"], "dead_lettered");
    assert_eq!(rig.fake.requests_to(Route::Messages).len(), 3);
    assert_eq!(rig.fake.created(Route::Messages).len(), 0);
    rig.finish().await;
}

#[tokio::test]
async fn permanent_errors_are_dead_lettered_with_the_twilio_code_without_retry() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    let cases = [
        (21211, 400, "+14155550140", "failed", "provider_rejected"),
        (21614, 400, "+14155550141", "failed", "provider_rejected"),
        (21408, 400, "+14155550142", "failed", "provider_rejected"),
        (20003, 401, "+14155550143", "failed", "provider_rejected"),
        (21610, 400, "+14155550144", "opted_out", "opted_out"),
    ];
    for (code, http, to, expected_status, reason) in cases {
        rig.fake.enqueue(
            Route::Messages,
            Reply::TwilioError {
                status: http,
                code,
                message: format!("error {code}"),
            },
        );
        let event = reply_to(to, "Will be refused");
        rig.publisher.publish(&event).await;
        let dead = rig.dead_letter_of(&event).await;
        assert_eq!(dead["twilioErrorCode"], code, "{dead}");
        assert_eq!(dead["httpStatus"], http);
        assert_eq!(dead["attempts"], 1);
        assert_eq!(dead["reason"], reason);
        assert_eq!(
            dead["originalEvent"]["correlationId"],
            event["correlationId"]
        );
        let status = rig.status_of(&event).await;
        assert_eq!(status["status"], expected_status, "{status}");
        assert_eq!(status["errorCode"], code);
    }
    // No retries: one request per event.
    assert_eq!(rig.fake.requests_to(Route::Messages).len(), cases.len());
    assert_eq!(rig.fake.created(Route::Messages).len(), 0);
    rig.finish().await;
}

#[tokio::test]
async fn malformed_events_are_dead_lettered_with_the_reason_and_the_loop_continues() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    let good = reply_to("+14155550150", "still working");

    let mut no_egress = reply_to("+14155550150", "x");
    no_egress.as_object_mut().unwrap().remove("egress");
    let mut other_connector = reply_to("+14155550150", "x");
    other_connector["egress"]["connector"] = json!("discord");
    let mut no_text = reply_to("+14155550150", "x");
    no_text.as_object_mut().unwrap().remove("message");
    let mut bad_target = reply_to("not-a-number", "x");
    bad_target["egress"]["channel"] = json!("not-a-number");

    rig.publisher
        .publish_raw(
            "internal.egress.v1",
            b"{this is not json",
            Some("bad-json-1"),
        )
        .await;
    for event in [&no_egress, &other_connector, &no_text, &bad_target] {
        rig.publisher.publish(event).await;
    }
    rig.publisher.publish(&good).await;

    let mut reasons = BTreeSet::new();
    for _ in 0..5 {
        let dead = crate::egress_support::next_json(&mut rig.dead).await;
        assert_eq!(dead["attempts"], 0);
        assert!(!dead["originalEvent"].is_null(), "{dead}");
        if dead["reason"] == "invalid_json" {
            assert_eq!(dead["originalEvent"], "{this is not json");
        }
        reasons.insert(dead["reason"].as_str().unwrap().to_owned());
    }
    let expected: BTreeSet<String> = [
        "invalid_json",
        "missing_egress",
        "unknown_connector",
        "no_text",
        "invalid_target",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(reasons, expected);

    let status = rig.status_of(&good).await;
    assert_eq!(status["status"], "sent");
    assert_eq!(
        bodies(&rig.fake.requests_to(Route::Messages)),
        vec!["still working"]
    );
    rig.finish().await;
}

#[tokio::test]
async fn one_recipient_in_order_while_other_recipients_go_concurrently() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    let a = "+14155550160";
    let b = "+14155550161";
    // A's first send is slow at Twilio.
    rig.fake.enqueue(
        Route::Messages,
        Reply::delayed(Duration::from_millis(1500), Reply::Success),
    );
    let a1 = reply_to(a, "A1");
    rig.publisher.publish(&a1).await;
    rig.fake.wait_for_requests(Route::Messages, 1, WAIT).await;
    let events = [
        reply_to(a, "A2"),
        reply_to(b, "B1"),
        reply_to(a, "A3"),
        reply_to(b, "B2"),
        reply_to(a, "A4"),
    ];
    for event in &events {
        rig.publisher.publish(event).await;
    }
    let requests = rig.fake.wait_for_requests(Route::Messages, 6, WAIT).await;
    let order = bodies(&requests);
    let of = |prefix: &str| -> Vec<String> {
        order
            .iter()
            .filter(|b| b.starts_with(prefix))
            .cloned()
            .collect()
    };
    assert_eq!(of("A"), vec!["A1", "A2", "A3", "A4"], "{order:?}");
    assert_eq!(of("B"), vec!["B1", "B2"], "{order:?}");
    // B did not wait behind A's slow send.
    let position = |body: &str| order.iter().position(|b| b == body).unwrap();
    assert!(position("B2") < position("A2"), "{order:?}");
    for event in std::iter::once(&a1).chain(events.iter()) {
        assert_eq!(rig.status_of(event).await["status"], "sent");
    }
    rig.finish().await;
}

#[tokio::test]
async fn an_existing_classic_egress_queue_is_used_as_it_is() {
    let url = require_broker!();
    // A broker (or an older deployment) that already has the queue as a classic queue: the
    // quorum declaration is refused and the consumer falls back to the classic one.
    let queue = format!("test-classic-{}.egress", uuid::Uuid::new_v4().simple());
    declare_queue_of_type(&url, &queue, "classic").await;
    let mut rig = Rig::start(
        &url,
        &[
            ("AMQP_EGRESS_QUEUE", &queue),
            ("AMQP_EGRESS_QUEUE_TYPE", "quorum"),
        ],
    )
    .await;
    let event = reply_to("+14155550195", "through a classic queue");
    rig.publisher.publish(&event).await;
    assert_eq!(rig.status_of(&event).await["status"], "sent");
    assert_eq!(rig.fake.created(Route::Messages).len(), 1);
    rig.finish().await;
}

#[tokio::test]
async fn the_egress_queue_is_a_quorum_queue_by_default() {
    let url = require_broker!();
    let queue = format!("test-quorum-{}.egress", uuid::Uuid::new_v4().simple());
    let mut rig = Rig::start(
        &url,
        &[
            ("AMQP_EGRESS_QUEUE", &queue),
            ("AMQP_EGRESS_QUEUE_TYPE", ""), // unset: the default
        ],
    )
    .await;
    let event = reply_to("+14155550196", "through a quorum queue");
    rig.publisher.publish(&event).await;
    assert_eq!(rig.status_of(&event).await["status"], "sent");
    // Re-declaring the queue as classic is refused (PRECONDITION_FAILED) only if it is quorum.
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let as_classic = channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    assert!(
        as_classic.is_err(),
        "the egress queue is not a quorum queue"
    );
    let _ = connection.close(200, "done".into()).await;
    rig.finish().await;
}

#[tokio::test]
async fn an_egress_queue_of_the_other_type_stops_egress_and_says_why_in_readyz() {
    let url = require_broker!();
    // A quorum queue left by an earlier deployment, and a configuration that asks for classic.
    let queue = format!("test-quorum-{}.egress", uuid::Uuid::new_v4().simple());
    declare_queue_of_type(&url, &queue, "quorum").await;
    let app = spawn_app_not_ready(
        Some(&url),
        &[
            ("AMQP_EGRESS_QUEUE", &queue),
            ("AMQP_EGRESS_QUEUE_TYPE", "classic"),
        ],
    )
    .await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let readiness = loop {
        let response = app.get("/readyz").await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exists as"))
        {
            assert_eq!(status, 503);
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reason within {WAIT:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = readiness["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "queue \"{queue}\" exists as a quorum queue but AMQP_EGRESS_QUEUE_TYPE=classic; \
             egress is stopped."
        )),
        "{reason}"
    );
    assert!(
        reason.contains("set AMQP_EGRESS_QUEUE_TYPE=quorum"),
        "{reason}"
    );
    assert!(
        reason.contains("point AMQP_EGRESS_QUEUE at a new name"),
        "{reason}"
    );
    assert_eq!(readiness["broker"], "connected");
    assert_eq!(readiness["egressConsumer"], false);

    let snapshot: Value = app.get("/_debug/twilio").await.json().await.unwrap();
    assert_eq!(snapshot["state"], "DEGRADED");
    assert_eq!(snapshot["degradedReason"], reason);

    // Nothing consumes the queue, and it is still the quorum queue it was.
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(passive.consumer_count(), 0);
    let _ = connection.close(200, "done".into()).await;
    drop(app);
    delete_queue(&url, &queue).await;
}
