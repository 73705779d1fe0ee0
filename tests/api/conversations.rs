//! `POST /webhooks/twilio/conversations` end to end: fixtures signed by Twilio's library in,
//! envelopes / status events on RabbitMQ out, and the bot's auto-join against the fake
//! Conversations API (checked against Twilio's OpenAPI document).

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_twilio::{FakeTwilio, Reply, Route};
use crate::helpers::{all_fixtures, fixture, fixture_tokens, header, spawn_app, Fixture, TestApp};
use crate::require_broker;
use crate::sms_webhook::assert_valid_envelope;
use ingress_egress::envelope::{stable_correlation_id, topics};

pub const QUIET: Duration = Duration::from_millis(700);
pub const BOT: &str = "ingress-bot";

/// A form parameter of a fixture.
pub fn param(fixture: &Fixture, name: &str) -> String {
    fixture
        .params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{} has no {name}", fixture.name))
}

/// The value of one Prometheus sample (`0` when absent), e.g.
/// `metric(&app, "ingress_egress_ignored_events_total", &[("event_type", "onMessageUpdated")])`.
pub async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

async fn post_ok(app: &TestApp, name: &str) {
    let response = app.post_fixture(&fixture(name)).await;
    assert_eq!(response.status(), 200, "{name}");
    assert!(response.text().await.unwrap().contains("<Response/>"));
}

#[tokio::test]
async fn on_message_added_is_published_addressed_to_the_conversation() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[("TWILIO_IDENTITY", BOT)]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let f = fixture("conv_on_message_added");

    post_ok(&app, &f.name).await;

    let (delivery, envelope) = tap.next_json().await;
    assert_valid_envelope(&envelope);
    let conversation = param(&f, "ConversationSid");
    let sid = param(&f, "MessageSid");
    assert_eq!(envelope["type"], "chat.message.v1");
    assert_eq!(
        envelope["correlationId"],
        stable_correlation_id(&format!("twilio:{sid}")).to_string()
    );
    assert_eq!(envelope["ingress"]["channel"], conversation.as_str());
    assert_eq!(envelope["ingress"]["connector"], "twilio");
    assert_eq!(envelope["egress"]["channel"], conversation.as_str());
    assert_eq!(envelope["egress"]["destination"], "internal.egress.v1");
    assert_eq!(envelope["egress"]["type"], "chat");
    assert_eq!(
        envelope["egress"]["metadata"]["twilio"]["conversationSid"],
        conversation.as_str()
    );
    assert_eq!(
        envelope["egress"]["metadata"]["twilio"]["messagingServiceSid"],
        param(&f, "MessagingServiceSid").as_str()
    );
    let identity = &envelope["identity"]["external"];
    assert_eq!(identity["id"], param(&f, "Author").as_str());
    assert_eq!(identity["platform"], "twilio");
    assert_eq!(identity["metadata"]["channelType"], "sms");
    assert_eq!(identity["metadata"]["source"], "SMS");
    assert_eq!(
        identity["metadata"]["participantSid"],
        param(&f, "ParticipantSid").as_str()
    );
    assert_eq!(
        identity["metadata"]["conversationSid"],
        conversation.as_str()
    );
    assert_eq!(envelope["message"]["id"], sid.as_str());
    assert_eq!(envelope["message"]["role"], "user");
    assert_eq!(envelope["message"]["text"], param(&f, "Body").as_str());
    assert!(envelope["message"].get("media").is_none());
    for (key, value) in &f.params {
        assert_eq!(
            envelope["message"]["rawPlatformPayload"][key],
            value.as_str(),
            "raw field {key}"
        );
    }
    let twilio = &envelope["metadata"]["twilio"];
    assert_eq!(twilio["index"], 3);
    assert_eq!(twilio["attributes"], json!({}));
    assert_eq!(
        twilio["participantSid"],
        param(&f, "ParticipantSid").as_str()
    );
    assert_eq!(twilio["messageSid"], sid.as_str());
    assert_eq!(
        envelope["routing"],
        json!({"stage": "initial", "slip": [], "history": []})
    );

    assert_eq!(delivery.routing_key.as_str(), "internal.ingress.v1");
    let props = &delivery.properties;
    assert_eq!(
        props.message_id().as_ref().unwrap().as_str(),
        format!("twilio:{sid}")
    );
    assert_eq!(props.kind().as_ref().unwrap().as_str(), "chat.message.v1");
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(
        header(&delivery, "cloudEvents:type").as_deref(),
        Some("chat.message.v1")
    );

    // Twilio retrying the webhook: answered, not published again.
    post_ok(&app, &f.name).await;
    assert!(tap.next(QUIET).await.is_none(), "a retry was republished");
}

#[tokio::test]
async fn whatsapp_media_and_chat_messages_are_mapped() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;

    let wa = fixture("conv_on_message_added_whatsapp_media");
    post_ok(&app, &wa.name).await;
    let (_, envelope) = tap.next_json().await;
    assert_valid_envelope(&envelope);
    assert_eq!(
        envelope["identity"]["external"]["id"],
        "whatsapp:+447700900123"
    );
    assert_eq!(
        envelope["identity"]["external"]["metadata"]["channelType"],
        "whatsapp"
    );
    let media: Vec<Value> = serde_json::from_str(&param(&wa, "Media")).unwrap();
    let published = envelope["message"]["media"].as_array().unwrap();
    assert_eq!(published.len(), 2);
    for (sent, got) in media.iter().zip(published) {
        assert_eq!(got["sid"], sent["Sid"]);
        assert_eq!(got["contentType"], sent["ContentType"]);
        assert_eq!(got["size"], sent["Size"]);
        assert_eq!(got["filename"], sent["Filename"]);
    }
    assert_eq!(envelope["message"]["text"], "Here are the photos 📸");

    let chat = fixture("conv_on_message_added_chat");
    post_ok(&app, &chat.name).await;
    let (_, envelope) = tap.next_json().await;
    assert_valid_envelope(&envelope);
    assert_eq!(
        envelope["identity"]["external"]["id"],
        "agent.alice@example.com"
    );
    let meta = &envelope["identity"]["external"]["metadata"];
    assert_eq!(meta["channelType"], "chat");
    assert_eq!(meta["source"], "SDK");
    assert_eq!(meta["clientIdentity"], "agent.alice@example.com");
    assert_eq!(
        envelope["metadata"]["twilio"]["attributes"],
        json!({"importance": "high"})
    );
    assert_eq!(envelope["metadata"]["twilio"]["index"], 6);
    assert_eq!(
        envelope["ingress"]["channel"],
        param(&chat, "ConversationSid").as_str()
    );
}

#[tokio::test]
async fn the_bots_own_message_is_not_republished_and_is_counted() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[("TWILIO_IDENTITY", BOT)]).await;
    let mut tap = app.tap(topics::INGRESS).await;

    post_ok(&app, "conv_on_message_added_by_bot").await;
    // A customer message afterwards is published: the tap works and the bot's message is
    // not merely late.
    post_ok(&app, "conv_on_message_added").await;
    let all = tap.collect_until_quiet(QUIET).await;
    assert_eq!(all.len(), 1, "only the customer's message is published");
    let envelope: Value = serde_json::from_slice(&all[0].data).unwrap();
    assert_eq!(
        envelope["message"]["id"],
        param(&fixture("conv_on_message_added"), "MessageSid").as_str()
    );
    assert_eq!(
        metric(
            &app,
            "ingress_egress_ignored_events_total",
            &[("event_type", "onMessageAdded.own")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_message_marked_as_ours_is_not_republished_even_without_an_identity() {
    let amqp = require_broker!();
    // No TWILIO_IDENTITY: the fixture's Attributes.origin == "ingress-egress" still stops it.
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    post_ok(&app, "conv_on_message_added_by_bot").await;
    assert!(tap.next(QUIET).await.is_none());
}

#[tokio::test]
async fn other_event_types_are_acknowledged_counted_and_not_published() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut ingress = app.tap(topics::INGRESS).await;
    let mut status = app.tap(topics::EGRESS_STATUS).await;

    post_ok(&app, "conv_on_message_updated").await;
    // Without TWILIO_IDENTITY the join events are no-ops too.
    post_ok(&app, "conv_on_conversation_added").await;
    post_ok(&app, "conv_on_participant_added").await;

    assert!(ingress.next(QUIET).await.is_none());
    assert!(status.next(Duration::from_millis(100)).await.is_none());
    assert_eq!(
        metric(
            &app,
            "ingress_egress_ignored_events_total",
            &[("event_type", "onMessageUpdated")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &app,
            "ingress_egress_webhook_requests_total",
            &[("route", "conversations"), ("outcome", "ignored")]
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn pre_event_webhooks_get_an_empty_200_and_are_not_used() {
    let amqp = require_broker!();
    let (fake, app) = app_with_fake(&amqp).await;
    let mut tap = app.tap("#").await;
    for (name, event_type) in [
        ("conv_on_message_add_pre_event", "onMessageAdd"),
        ("conv_on_conversation_add_pre_event", "onConversationAdd"),
    ] {
        let f = fixture(name);
        assert_eq!(param(&f, "EventType"), event_type);
        let response = app.post_fixture(&f).await;
        assert_eq!(response.status(), 200, "{name}");
        // Pre-event webhooks read JSON or nothing: no TwiML, no content type.
        assert!(
            response.headers().get("content-type").is_none(),
            "{name}: {:?}",
            response.headers()
        );
        assert_eq!(response.text().await.unwrap(), "", "{name}");
        assert_eq!(
            metric(
                &app,
                "ingress_egress_ignored_events_total",
                &[("event_type", event_type)]
            )
            .await,
            1.0,
            "{name}"
        );
    }
    assert!(tap.next(QUIET).await.is_none(), "nothing is published");
    // onConversationAdd is not onConversationAdded: the conversation does not exist yet, so
    // the bot does not try to join it.
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert_eq!(
        metric(
            &app,
            "ingress_egress_webhook_requests_total",
            &[("route", "conversations"), ("outcome", "ignored")]
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn a_conversations_webhook_configured_with_get_is_served_like_post() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[("TWILIO_IDENTITY", BOT)]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let get = fixture("conv_on_message_added_get");
    assert_eq!(get.method, "GET");
    assert!(get.body.is_empty());

    let response = app.post_fixture(&get).await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("<Response/>"));
    let (delivery, envelope) = tap.next_json().await;
    assert_valid_envelope(&envelope);
    let sid = param(&get, "MessageSid");
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        format!("twilio:{sid}")
    );
    assert_eq!(envelope["message"]["text"], param(&get, "Body").as_str());
    assert_eq!(
        envelope["ingress"]["channel"],
        param(&get, "ConversationSid").as_str()
    );

    // Signed over the query: a changed parameter breaks it.
    let mut tampered = get.clone();
    tampered.path_and_query = tampered
        .path_and_query
        .replace("Sent+by+GET", "Sent+by+GOT");
    assert_ne!(tampered.path_and_query, get.path_and_query);
    assert_eq!(app.post_fixture(&tampered).await.status(), 403);
    assert!(tap.next(QUIET).await.is_none());
}

#[tokio::test]
async fn on_delivery_updated_becomes_status_events() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[("TWILIO_IDENTITY", BOT)]).await;
    let mut status = app.tap(topics::EGRESS_STATUS).await;
    let mut ingress = app.tap(topics::INGRESS).await;

    let delivered = fixture("conv_on_delivery_updated");
    let failed = fixture("conv_on_delivery_updated_failed");
    post_ok(&app, &delivered.name).await;
    post_ok(&app, &failed.name).await;
    post_ok(&app, &delivered.name).await; // Twilio retry: once

    let all = status.collect_until_quiet(QUIET).await;
    assert_eq!(all.len(), 2, "delivered and failed, the retry deduplicated");
    let events: Vec<Value> = all
        .iter()
        .map(|d| serde_json::from_slice(&d.data).unwrap())
        .collect();
    let im = param(&delivered, "MessageSid");
    let participant = param(&delivered, "ParticipantSid");
    assert_eq!(events[0]["messageSid"], im.as_str());
    assert_eq!(events[0]["status"], "delivered");
    assert!(events[0].get("errorCode").is_none());
    assert_eq!(
        events[0]["to"],
        param(&delivered, "ConversationSid").as_str()
    );
    assert_eq!(events[0]["from"], BOT);
    assert_eq!(events[0]["at"], "2024-05-14T09:31:16.512Z");
    assert_eq!(events[0]["source"], "conversations.delivery_updated");
    assert_eq!(
        events[0]["metadata"]["channelMessageSid"],
        param(&delivered, "ChannelMessageSid").as_str()
    );
    assert_eq!(events[1]["status"], "failed");
    assert_eq!(events[1]["errorCode"], "30008");
    assert!(events[1]["errorMessage"].is_string());
    assert_eq!(
        all[0].properties.message_id().as_ref().unwrap().as_str(),
        format!("twilio:status:{im}:{participant}:delivered")
    );
    assert_eq!(all[0].routing_key.as_str(), "internal.egress.status.v1");
    assert!(ingress.next(Duration::from_millis(100)).await.is_none());
}

#[tokio::test]
async fn tampered_conversations_webhooks_get_403_and_publish_nothing() {
    let amqp = require_broker!();
    let fake = FakeTwilio::start(
        &fixture_tokens().account_sid,
        &fixture_tokens().primary_auth_token,
    )
    .await;
    let app = spawn_app(
        Some(&amqp),
        &[
            ("TWILIO_IDENTITY", BOT),
            ("TWILIO_CONVERSATIONS_BASE_URL", &fake.base_url),
        ],
    )
    .await;
    let mut ingress = app.tap(topics::INGRESS).await;

    let tampered = fixture("conv_on_message_added_tampered");
    assert!(!tampered.expect_valid);
    let response = app.post_fixture(&tampered).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_signature");

    // A valid join event with its signature swapped for another fixture's: 403, no join.
    let mut forged = fixture("conv_on_conversation_added");
    forged.signature = fixture("conv_on_participant_added").signature;
    assert_eq!(app.post_fixture(&forged).await.status(), 403);
    let mut unsigned = fixture("conv_on_message_added");
    unsigned.signature = String::new();
    let response = app
        .client
        .post(format!("{}{}", app.address, unsigned.path_and_query))
        .header("Content-Type", &unsigned.content_type)
        .body(unsigned.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    assert!(ingress.next(QUIET).await.is_none());
    assert!(
        fake.requests().is_empty(),
        "a forged webhook made us call Twilio"
    );
}

// ------------------------------------------------------------------------------- auto-join

async fn app_with_fake(amqp: &str) -> (FakeTwilio, TestApp) {
    let tokens = fixture_tokens();
    let fake = FakeTwilio::start(&tokens.account_sid, &tokens.primary_auth_token).await;
    let app = spawn_app(
        Some(amqp),
        &[
            ("TWILIO_IDENTITY", BOT),
            ("TWILIO_CONVERSATIONS_BASE_URL", &fake.base_url),
            ("TWILIO_API_BASE_URL", &fake.base_url),
        ],
    )
    .await;
    (fake, app)
}

#[tokio::test]
async fn the_bot_joins_a_new_conversation_exactly_once() {
    let amqp = require_broker!();
    let (fake, app) = app_with_fake(&amqp).await;
    let mut ingress = app.tap(topics::INGRESS).await;
    let conversation = param(&fixture("conv_on_conversation_added"), "ConversationSid");

    post_ok(&app, "conv_on_conversation_added").await;
    let requests = fake
        .wait_for_requests(Route::ConversationParticipants, 1, Duration::from_secs(10))
        .await;
    assert_eq!(requests[0].param("Identity"), Some(BOT));
    assert_eq!(
        requests[0]
            .path_params
            .get("ConversationSid")
            .map(String::as_str),
        Some(conversation.as_str())
    );

    // Every later announcement of the same conversation: no second join.
    post_ok(&app, "conv_on_participant_added").await;
    post_ok(&app, "conv_on_conversation_added").await;
    post_ok(&app, "conv_on_participant_added").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(fake.requests_to(Route::ConversationParticipants).len(), 1);
    assert_eq!(fake.created(Route::ConversationParticipants).len(), 1);
    fake.assert_no_violations();
    assert!(ingress.next(Duration::from_millis(100)).await.is_none());
    assert_eq!(
        metric(
            &app,
            "ingress_egress_conversation_joins_total",
            &[("outcome", "joined")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn announcements_arriving_together_still_join_once() {
    let amqp = require_broker!();
    let (fake, app) = app_with_fake(&amqp).await;
    // The first answer is slow, so the other webhooks arrive while the join is in flight.
    fake.enqueue(
        Route::ConversationParticipants,
        Reply::delayed(Duration::from_millis(500), Reply::Success),
    );
    let posts = (0..6).map(|i| {
        let name = if i % 2 == 0 {
            "conv_on_conversation_added"
        } else {
            "conv_on_participant_added"
        };
        let app = &app;
        async move { app.post_fixture(&fixture(name)).await.status() }
    });
    for status in futures_util::future::join_all(posts).await {
        assert_eq!(status, 200);
    }
    fake.wait_for_requests(Route::ConversationParticipants, 1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    post_ok(&app, "conv_on_conversation_added").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(fake.requests_to(Route::ConversationParticipants).len(), 1);
    fake.assert_no_violations();
}

#[tokio::test]
async fn already_a_participant_409_counts_as_joined() {
    let amqp = require_broker!();
    let (fake, app) = app_with_fake(&amqp).await;
    let conversation = param(&fixture("conv_on_conversation_added"), "ConversationSid");
    // The bot is already in the conversation: Twilio answers 409 / 50433.
    fake.seed_participant(&conversation, BOT);

    post_ok(&app, "conv_on_conversation_added").await;
    fake.wait_for_requests(Route::ConversationParticipants, 1, Duration::from_secs(10))
        .await;
    post_ok(&app, "conv_on_participant_added").await;
    tokio::time::sleep(QUIET).await;

    assert_eq!(
        fake.requests_to(Route::ConversationParticipants).len(),
        1,
        "409 is success: no retry, no second join"
    );
    assert!(fake.created(Route::ConversationParticipants).is_empty());
    fake.assert_no_violations();
    assert_eq!(
        metric(
            &app,
            "ingress_egress_conversation_joins_total",
            &[("outcome", "already_participant")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &app,
            "ingress_egress_conversation_joins_total",
            &[("outcome", "retried")]
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn error_50433_with_another_status_also_counts_as_joined() {
    let amqp = require_broker!();
    let (fake, app) = app_with_fake(&amqp).await;
    fake.enqueue(
        Route::ConversationParticipants,
        Reply::TwilioError {
            status: 400,
            code: 50433,
            message: "Participant already exists".to_owned(),
        },
    );
    post_ok(&app, "conv_on_conversation_added").await;
    fake.wait_for_requests(Route::ConversationParticipants, 1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(fake.requests_to(Route::ConversationParticipants).len(), 1);
    assert_eq!(
        metric(
            &app,
            "ingress_egress_conversation_joins_total",
            &[("outcome", "already_participant")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_failed_join_is_retried_in_the_background_until_it_succeeds() {
    let amqp = require_broker!();
    let (fake, app) = app_with_fake(&amqp).await;
    fake.enqueue(Route::ConversationParticipants, Reply::status(503));
    fake.enqueue(
        Route::ConversationParticipants,
        Reply::too_many_requests(Some(1)),
    );

    // The webhook is answered 200 although Twilio fails: the join is not its business.
    post_ok(&app, "conv_on_conversation_added").await;
    let requests = fake
        .wait_for_requests(Route::ConversationParticipants, 3, Duration::from_secs(20))
        .await;
    assert!(requests.iter().all(|r| r.param("Identity") == Some(BOT)));
    tokio::time::sleep(QUIET).await;
    post_ok(&app, "conv_on_participant_added").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(fake.requests_to(Route::ConversationParticipants).len(), 3);
    assert_eq!(fake.created(Route::ConversationParticipants).len(), 1);
    fake.assert_no_violations();
    assert_eq!(
        metric(
            &app,
            "ingress_egress_conversation_joins_total",
            &[("outcome", "retried")]
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn an_unreachable_conversations_api_does_not_fail_the_webhook() {
    let amqp = require_broker!();
    // Nothing listens on port 9 of localhost.
    let app = spawn_app(
        Some(&amqp),
        &[
            ("TWILIO_IDENTITY", BOT),
            ("TWILIO_CONVERSATIONS_BASE_URL", "http://127.0.0.1:9"),
        ],
    )
    .await;
    post_ok(&app, "conv_on_conversation_added").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let retried = metric(
            &app,
            "ingress_egress_conversation_joins_total",
            &[("outcome", "retried")],
        )
        .await;
        if retried >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed join was not retried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_bot_being_added_or_posting_means_no_join_is_needed() {
    let amqp = require_broker!();
    let (fake, app) = app_with_fake(&amqp).await;
    // The bot posted in the conversation: it is a participant.
    post_ok(&app, "conv_on_message_added_by_bot").await;
    post_ok(&app, "conv_on_conversation_added").await;
    post_ok(&app, "conv_on_participant_added").await;
    tokio::time::sleep(QUIET).await;
    assert!(fake.requests_to(Route::ConversationParticipants).is_empty());

    // Twilio announcing the bot itself as the new participant: no join either.
    let (fake, app) = app_with_fake(&amqp).await;
    post_ok(&app, "conv_on_participant_added_bot").await;
    post_ok(&app, "conv_on_conversation_added").await;
    tokio::time::sleep(QUIET).await;
    assert!(fake.requests_to(Route::ConversationParticipants).is_empty());
}

#[tokio::test]
async fn each_conversation_is_joined_once() {
    let amqp = require_broker!();
    let (fake, app) = app_with_fake(&amqp).await;
    let first = param(&fixture("conv_on_conversation_added"), "ConversationSid");
    let second = param(
        &fixture("conv_on_conversation_added_second"),
        "ConversationSid",
    );
    assert_ne!(first, second);
    for name in [
        "conv_on_conversation_added",
        "conv_on_conversation_added_second",
        "conv_on_participant_added",
        "conv_on_conversation_added_second",
    ] {
        post_ok(&app, name).await;
    }
    fake.wait_for_requests(Route::ConversationParticipants, 2, Duration::from_secs(10))
        .await;
    tokio::time::sleep(QUIET).await;
    let mut joined: Vec<String> = fake
        .requests_to(Route::ConversationParticipants)
        .iter()
        .map(|r| r.path_params["ConversationSid"].clone())
        .collect();
    joined.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(joined, expected);
    fake.assert_no_violations();
}

#[tokio::test]
async fn every_conversations_status_and_event_streams_fixture_gets_the_librarys_verdict() {
    let amqp = require_broker!();
    let (fake, app) = app_with_fake(&amqp).await;
    let fixtures: Vec<Fixture> = all_fixtures()
        .into_iter()
        .filter(|f| !f.path_and_query.starts_with("/webhooks/twilio/sms"))
        .collect();
    assert!(fixtures.len() >= 20);
    for f in &fixtures {
        let response = app.post_fixture(f).await;
        let status = response.status().as_u16();
        let expected = match (f.expect_valid, f.name.as_str()) {
            (false, _) => 403,
            (true, "status_malformed_no_status") => 400,
            (true, _) => 200,
        };
        assert_eq!(
            status,
            expected,
            "{}: {}",
            f.name,
            response.text().await.unwrap()
        );
    }
    fake.assert_no_violations();
}

#[tokio::test]
async fn the_new_webhooks_are_documented_with_examples() {
    let app = spawn_app(None, &[]).await;
    let doc = app.openapi_document().await;
    let schema_example = |schema_ref: &Value| {
        let name = schema_ref.as_str().unwrap().rsplit('/').next().unwrap();
        doc["components"]["schemas"][name]["example"].clone()
    };
    for (path, field) in [
        ("/webhooks/twilio/conversations", "EventType"),
        ("/webhooks/twilio/status", "MessageStatus"),
    ] {
        let op = &doc["paths"][path]["post"];
        assert!(op.is_object(), "{path} is not documented");
        let form = &op["requestBody"]["content"]["application/x-www-form-urlencoded"];
        assert!(
            schema_example(&form["schema"]["$ref"])[field].is_string(),
            "{path} has no request example"
        );
        for status in ["200", "400", "403", "413", "415", "503"] {
            assert!(op["responses"][status].is_object(), "{path} {status}");
        }
    }
    let es = &doc["paths"]["/webhooks/twilio/event-streams"]["post"];
    let body = &es["requestBody"]["content"]["application/json"];
    assert_eq!(body["schema"]["type"], "array");
    assert!(body["example"][0]["type"].is_string());
    assert!(schema_example(&body["schema"]["items"]["$ref"])["data"].is_object());
    assert!(schema_example(&json!("#/components/schemas/StatusEvent"))["messageSid"].is_string());
}

#[tokio::test]
async fn a_pending_join_survives_a_restart() {
    let amqp = require_broker!();
    let tokens = fixture_tokens();
    let fake = FakeTwilio::start(&tokens.account_sid, &tokens.primary_auth_token).await;
    let outbox = tempfile::tempdir().unwrap();
    let outbox_dir = outbox.path().display().to_string();
    let vars = [
        ("TWILIO_IDENTITY", BOT),
        ("TWILIO_CONVERSATIONS_BASE_URL", fake.base_url.as_str()),
        ("TWILIO_API_BASE_URL", fake.base_url.as_str()),
        ("OUTBOX_DIR", outbox_dir.as_str()),
    ];
    fake.enqueue(
        Route::ConversationParticipants,
        Reply::Status {
            status: 503,
            retry_after: Some(60),
            body: None,
        },
    );
    let first = spawn_app(Some(&amqp), &vars).await;
    post_ok(&first, "conv_on_conversation_added").await;
    fake.wait_for_requests(Route::ConversationParticipants, 1, Duration::from_secs(10))
        .await;
    drop(first); // stops while the join waits a minute to retry

    let conversation = param(&fixture("conv_on_conversation_added"), "ConversationSid");
    let pending = outbox.path().join("pending-joins").join(&conversation);
    assert!(pending.exists(), "the pending join is on disk");

    // Nothing scripted any more: Twilio now accepts the join.
    let _second = spawn_app(Some(&amqp), &vars).await;
    let requests = fake
        .wait_for_requests(Route::ConversationParticipants, 2, Duration::from_secs(10))
        .await;
    assert_eq!(requests[1].path_params["ConversationSid"], conversation);
    for _ in 0..50 {
        if !pending.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pending.exists(), "done joins are forgotten");
    assert_eq!(fake.created(Route::ConversationParticipants).len(), 1);
    fake.assert_no_violations();
}
