//! `POST /webhooks/twilio/event-streams` end to end: CloudEvents batches signed through
//! `bodySHA256` in, the same envelopes as the form webhooks out.

use std::{collections::BTreeSet, time::Duration};

use serde_json::{json, Value};

use crate::conversations::{metric, QUIET};
use crate::egress_support::fake_twilio;
use crate::fake_twilio::{Reply, Route};
use crate::helpers::{fixture, fixture_tokens, spawn_app, Fixture};
use crate::require_broker;
use crate::sms_webhook::assert_valid_envelope;
use ingress_egress::connectors::twilio::ingress::signature::{body_sha256, compute_signature};
use ingress_egress::envelope::{stable_correlation_id, topics};

/// The CloudEvents of a fixture's body.
fn events(f: &Fixture) -> Vec<Value> {
    serde_json::from_str::<Vec<Value>>(&f.body).unwrap()
}

#[tokio::test]
async fn an_inbound_message_event_becomes_the_sms_webhook_envelope() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let f = fixture("es_inbound_message");
    let data = events(&f)[0]["data"].clone();

    let response = app.post_fixture(&f).await;
    assert_eq!(response.status(), 200);

    let (delivery, envelope) = tap.next_json().await;
    assert_valid_envelope(&envelope);
    let sid = data["messageSid"].as_str().unwrap();
    assert_eq!(envelope["type"], "chat.message.v1");
    assert_eq!(
        envelope["correlationId"],
        stable_correlation_id(&format!("twilio:{sid}")).to_string()
    );
    assert_eq!(envelope["ingress"]["channel"], data["from"]);
    assert_eq!(envelope["identity"]["external"]["id"], data["from"]);
    assert_eq!(
        envelope["identity"]["external"]["metadata"]["channelType"],
        "sms"
    );
    assert_eq!(
        envelope["identity"]["external"]["metadata"]["fromCountry"],
        data["fromCountry"]
    );
    assert_eq!(envelope["egress"]["channel"], data["from"]);
    assert_eq!(envelope["egress"]["metadata"]["twilio"]["from"], data["to"]);
    assert_eq!(
        envelope["egress"]["metadata"]["twilio"]["messagingServiceSid"],
        data["messagingServiceSid"]
    );
    assert_eq!(envelope["message"]["id"], sid);
    assert_eq!(envelope["message"]["text"], data["body"]);
    assert_eq!(envelope["message"]["rawPlatformPayload"]["MessageSid"], sid);
    assert_eq!(envelope["metadata"]["twilio"]["via"], "event_streams");
    assert_eq!(
        envelope["metadata"]["twilio"]["cloudEventId"],
        events(&f)[0]["id"]
    );
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        format!("twilio:{sid}")
    );
    assert_eq!(delivery.routing_key.as_str(), "internal.ingress.v1");
}

#[tokio::test]
async fn a_conversation_message_event_becomes_the_on_message_added_envelope() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[("TWILIO_IDENTITY", "ingress-bot")]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let f = fixture("es_conversation_message_added");
    let data = events(&f)[0]["data"].clone();

    assert_eq!(app.post_fixture(&f).await.status(), 200);

    let (delivery, envelope) = tap.next_json().await;
    assert_valid_envelope(&envelope);
    let sid = data["MessageSid"].as_str().unwrap();
    assert_eq!(envelope["ingress"]["channel"], data["ConversationSid"]);
    assert_eq!(envelope["egress"]["channel"], data["ConversationSid"]);
    assert_eq!(envelope["identity"]["external"]["id"], data["Author"]);
    assert_eq!(
        envelope["identity"]["external"]["metadata"]["channelType"],
        "sms"
    );
    assert_eq!(
        envelope["identity"]["external"]["metadata"]["participantSid"],
        data["ParticipantSid"]
    );
    assert_eq!(envelope["message"]["id"], sid);
    assert_eq!(envelope["message"]["text"], data["MessageBody"]);
    assert_eq!(envelope["metadata"]["twilio"]["index"], data["Index"]);
    assert_eq!(
        envelope["metadata"]["twilio"]["attributes"],
        data["Attributes"]
    );
    assert_eq!(envelope["metadata"]["twilio"]["via"], "event_streams");
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        format!("twilio:{sid}")
    );
}

#[tokio::test]
async fn a_mixed_batch_publishes_known_types_and_ignores_the_rest() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let mut status = app.tap(topics::EGRESS_STATUS).await;
    let f = fixture("es_batch_mixed");
    let batch = events(&f);
    assert_eq!(batch.len(), 3);

    assert_eq!(app.post_fixture(&f).await.status(), 200);
    let all = tap.collect_until_quiet(QUIET).await;
    // A sender and a conversation: published concurrently, so in either order.
    let ids: BTreeSet<String> = all
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(all.len(), 2);
    assert_eq!(
        ids,
        BTreeSet::from([
            format!(
                "twilio:{}",
                batch[0]["data"]["messageSid"].as_str().unwrap()
            ),
            format!(
                "twilio:{}",
                batch[1]["data"]["MessageSid"].as_str().unwrap()
            ),
        ]),
        "the unknown type is not published"
    );
    for delivery in &all {
        assert_valid_envelope(&serde_json::from_slice(&delivery.data).unwrap());
    }
    assert!(status.next(Duration::from_millis(100)).await.is_none());
    let unknown = batch[2]["type"].as_str().unwrap();
    assert_eq!(
        metric(
            &app,
            "ingress_egress_ignored_events_total",
            &[("event_type", unknown)]
        )
        .await,
        1.0
    );

    // Redelivered batch: acknowledged, nothing published twice.
    assert_eq!(app.post_fixture(&f).await.status(), 200);
    assert!(tap.next(QUIET).await.is_none());
}

#[tokio::test]
async fn events_seen_alone_are_not_published_again_in_a_batch() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;

    assert_eq!(
        app.post_fixture(&fixture("es_inbound_message"))
            .await
            .status(),
        200
    );
    assert_eq!(tap.collect_until_quiet(QUIET).await.len(), 1);
    assert_eq!(
        app.post_fixture(&fixture("es_batch_mixed")).await.status(),
        200
    );
    let rest = tap.collect_until_quiet(QUIET).await;
    assert_eq!(rest.len(), 1, "only the conversation message is new");
    let envelope: Value = serde_json::from_slice(&rest[0].data).unwrap();
    assert!(envelope["ingress"]["channel"]
        .as_str()
        .unwrap()
        .starts_with("CH"));
}

#[tokio::test]
async fn a_tampered_batch_gets_403_and_publishes_nothing() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;

    let tampered = fixture("es_tampered_body");
    assert!(!tampered.expect_valid);
    let response = app.post_fixture(&tampered).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_signature");

    // A genuine batch with the signature of another one.
    let mut forged = fixture("es_batch_mixed");
    forged.signature = fixture("es_inbound_message").signature;
    assert_eq!(app.post_fixture(&forged).await.status(), 403);

    // The body of one batch under another batch's (valid) URL and signature.
    let mut swapped = fixture("es_inbound_message");
    swapped.body = fixture("es_conversation_message_added").body;
    assert_eq!(app.post_fixture(&swapped).await.status(), 403);

    assert!(tap.next(QUIET).await.is_none());
}

#[tokio::test]
async fn the_bots_own_conversation_message_is_not_republished() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[("TWILIO_IDENTITY", "ingress-bot")]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let f = fixture("es_conversation_message_added_by_bot");
    assert_eq!(events(&f)[0]["data"]["Author"], "ingress-bot");
    assert_eq!(app.post_fixture(&f).await.status(), 200);
    assert!(tap.next(QUIET).await.is_none());
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
async fn a_malformed_event_is_skipped_and_the_rest_of_the_batch_published() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let f = fixture("es_batch_with_malformed_event");
    let batch = events(&f);
    assert!(batch[0]["data"].get("from").is_none());

    assert_eq!(app.post_fixture(&f).await.status(), 200);
    let all = tap.collect_until_quiet(QUIET).await;
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].properties.message_id().as_ref().unwrap().as_str(),
        format!(
            "twilio:{}",
            batch[1]["data"]["MessageSid"].as_str().unwrap()
        )
    );
    assert_eq!(
        metric(
            &app,
            "ingress_egress_ignored_events_total",
            &[(
                "event_type",
                "com.twilio.messaging.inbound-message.received.malformed"
            )]
        )
        .await,
        1.0
    );
}

/// An inbound-message CloudEvent for a fresh MessageSid, as Event Streams sends it.
fn inbound_event(from: &str, body: &str) -> Value {
    let tokens = fixture_tokens();
    let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    json!({
        "specversion": "1.0",
        "type": "com.twilio.messaging.inbound-message.received",
        "source": format!("/2010-04-01/Accounts/{}/Messages/{sid}.json", tokens.account_sid),
        "id": format!("EZ{}", uuid::Uuid::new_v4().simple()),
        "dataschema": "https://events-schemas.twilio.com/Messaging.InboundMessageV1/6",
        "datacontenttype": "application/json",
        "time": "2024-05-14T09:40:00.000Z",
        "data": {
            "messageSid": sid,
            "accountSid": tokens.account_sid,
            "from": from,
            "to": "+15005550006",
            "numMedia": 0,
            "body": body,
            "numSegments": 1,
        }
    })
}

/// A batch signed as Event Streams signs it (with our signer, whose agreement with Twilio's
/// library the signed fixtures establish).
fn signed_batch(events: &[Value]) -> Fixture {
    let tokens = fixture_tokens();
    let body = serde_json::to_string(events).unwrap();
    let path_and_query = format!(
        "/webhooks/twilio/event-streams?bodySHA256={}",
        body_sha256(body.as_bytes())
    );
    let signed_url = format!("{}{path_and_query}", tokens.public_base_url);
    Fixture {
        name: "generated batch".into(),
        method: "POST".into(),
        signature: compute_signature(&tokens.primary_auth_token, &signed_url, &[]),
        signed_url,
        public_base_url: tokens.public_base_url,
        path_and_query,
        content_type: "application/json".into(),
        body,
        params: Vec::new(),
        signed_with: "primary".into(),
        expect_valid: true,
    }
}

fn message_ids(deliveries: &[lapin::message::Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_event_streams_mms_reaches_rabbitmq_with_its_media() {
    let amqp = require_broker!();
    let fake = fake_twilio().await;
    let app = spawn_app(Some(&amqp), &[("TWILIO_API_BASE_URL", &fake.base_url)]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let f = fixture("es_inbound_mms");
    let data = events(&f)[0]["data"].clone();
    let sid = data["messageSid"].as_str().unwrap();
    assert!(sid.starts_with("MM"));
    assert_eq!(data["numMedia"], 2);
    assert!(
        data.get("mediaUrls").is_none(),
        "Event Streams sends no media URLs"
    );
    let media_sids = fake.seed_message_media(sid, &["image/jpeg", "image/png"]);

    assert_eq!(app.post_fixture(&f).await.status(), 200);

    let (delivery, envelope) = tap.next_json().await;
    assert_valid_envelope(&envelope);
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        format!("twilio:{sid}")
    );
    assert_eq!(
        envelope["identity"]["external"]["metadata"]["channelType"],
        "mms"
    );
    assert_eq!(envelope["message"]["text"], data["body"]);
    let account = data["accountSid"].as_str().unwrap();
    let media = envelope["message"]["media"].as_array().unwrap();
    assert_eq!(media.len(), 2, "{envelope}");
    for (i, (item, (me, content_type))) in media
        .iter()
        .zip(media_sids.iter().zip(["image/jpeg", "image/png"]))
        .enumerate()
    {
        // The SMS webhook's MediaUrlN form: the Media resource without `.json`.
        let url = format!(
            "{}/2010-04-01/Accounts/{account}/Messages/{sid}/Media/{me}",
            fake.base_url
        );
        assert_eq!(item["url"], url.as_str());
        assert_eq!(item["sid"], me.as_str());
        assert_eq!(item["contentType"], content_type);
        let raw = &envelope["message"]["rawPlatformPayload"];
        assert_eq!(raw[format!("MediaUrl{i}")], url.as_str());
        assert_eq!(raw[format!("MediaContentType{i}")], content_type);
    }
    assert!(envelope.get("errors").is_none(), "{envelope}");
    assert_eq!(envelope["metadata"]["twilio"]["via"], "event_streams");

    let lookups = fake.requests_to(Route::ListMedia);
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].path_params["MessageSid"], sid);
    assert_eq!(lookups[0].query_param("PageSize"), Some("20"));
    fake.assert_no_violations();
    assert_eq!(
        metric(
            &app,
            "ingress_egress_twilio_media_lookups_total",
            &[("outcome", "listed")]
        )
        .await,
        1.0
    );

    // Event Streams redelivers: nothing is published or looked up twice.
    assert_eq!(app.post_fixture(&f).await.status(), 200);
    assert!(tap.next(QUIET).await.is_none());
}

#[tokio::test]
async fn an_mms_whose_media_cannot_be_listed_yet_is_redelivered_not_lost() {
    let amqp = require_broker!();
    let fake = fake_twilio().await;
    let app = spawn_app(Some(&amqp), &[("TWILIO_API_BASE_URL", &fake.base_url)]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let f = fixture("es_inbound_mms");
    let sid = events(&f)[0]["data"]["messageSid"]
        .as_str()
        .unwrap()
        .to_owned();
    fake.seed_message_media(&sid, &["image/jpeg", "image/png"]);

    // Twilio's REST API fails, then answers too late for Event Streams' 5 s: both times the
    // batch is answered 503, which Event Streams retries (a 4xx would discard it).
    fake.enqueue(Route::ListMedia, Reply::status(503));
    fake.enqueue(
        Route::ListMedia,
        Reply::delayed(Duration::from_secs(8), Reply::Success),
    );
    for attempt in 0..2 {
        let response = app.post_fixture(&f).await;
        assert_eq!(response.status(), 503, "attempt {attempt}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(tap.next(QUIET).await.is_none(), "attempt {attempt}");
    }
    assert_eq!(
        metric(
            &app,
            "ingress_egress_twilio_media_lookups_total",
            &[("outcome", "retry")]
        )
        .await,
        2.0
    );

    // The redelivery finds the media and publishes the message, once.
    assert_eq!(app.post_fixture(&f).await.status(), 200);
    let (_, envelope) = tap.next_json().await;
    assert_eq!(envelope["message"]["media"].as_array().unwrap().len(), 2);
    assert!(tap.next(QUIET).await.is_none());
    assert_eq!(fake.requests_to(Route::ListMedia).len(), 3);
    fake.assert_no_violations();
}

#[tokio::test]
async fn an_mms_twilio_cannot_list_is_published_without_media_and_says_why() {
    let amqp = require_broker!();
    let fake = fake_twilio().await;
    let app = spawn_app(Some(&amqp), &[("TWILIO_API_BASE_URL", &fake.base_url)]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let f = fixture("es_inbound_mms");
    // Nothing seeded: the fake answers 404 (error 20404), which no retry changes.

    assert_eq!(app.post_fixture(&f).await.status(), 200);
    let (_, envelope) = tap.next_json().await;
    assert_valid_envelope(&envelope);
    assert_eq!(envelope["message"]["text"], events(&f)[0]["data"]["body"]);
    assert!(envelope["message"].get("media").is_none());
    let error = &envelope["errors"][0];
    assert_eq!(error["code"], "media_unavailable");
    assert_eq!(error["numMedia"], 2);
    assert_eq!(error["listed"], 0);
    assert!(
        error["message"].as_str().unwrap().contains("20404"),
        "{error}"
    );
    assert_eq!(
        metric(
            &app,
            "ingress_egress_twilio_media_lookups_total",
            &[("outcome", "unavailable")]
        )
        .await,
        1.0
    );
    fake.assert_no_violations();
}

#[tokio::test]
async fn our_rest_posted_system_message_is_not_republished_but_other_system_messages_are() {
    let amqp = require_broker!();
    for identity in ["", "ingress-bot"] {
        let app = spawn_app(Some(&amqp), &[("TWILIO_IDENTITY", identity)]).await;
        let mut tap = app.tap(topics::INGRESS).await;

        let ours = fixture("es_conversation_message_added_by_system_ours");
        let data = &events(&ours)[0]["data"];
        assert_eq!(data["Author"], "system");
        assert_eq!(data["Attributes"]["origin"], "ingress-egress");
        assert_eq!(app.post_fixture(&ours).await.status(), 200);
        assert!(tap.next(QUIET).await.is_none(), "identity {identity:?}");
        assert_eq!(
            metric(
                &app,
                "ingress_egress_ignored_events_total",
                &[("event_type", "onMessageAdded.own")]
            )
            .await,
            1.0
        );

        let other = fixture("es_conversation_message_added_by_system_other");
        let data = events(&other)[0]["data"].clone();
        assert_eq!(data["Author"], "system");
        assert_eq!(app.post_fixture(&other).await.status(), 200);
        let (_, envelope) = tap.next_json().await;
        assert_valid_envelope(&envelope);
        assert_eq!(envelope["identity"]["external"]["id"], "system");
        assert_eq!(envelope["message"]["id"], data["MessageSid"]);
    }
}

#[tokio::test]
async fn a_sink_configured_with_get_is_served_like_post() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let f = fixture("es_inbound_message_get");
    assert_eq!(f.method, "GET");
    assert_eq!(app.post_fixture(&f).await.status(), 200);
    let (delivery, _) = tap.next_json().await;
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        format!(
            "twilio:{}",
            events(&f)[0]["data"]["messageSid"].as_str().unwrap()
        )
    );
    let mut tampered = f.clone();
    tampered.body = tampered.body.replace("GET sink", "GOT sink");
    assert_eq!(app.post_fixture(&tampered).await.status(), 403);
    assert!(tap.next(QUIET).await.is_none());
}

#[tokio::test]
async fn batches_beyond_the_form_cap_are_taken_up_to_their_own_cap() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let text = "x".repeat(1200);
    let batch: Vec<Value> = (0..100)
        .map(|i| inbound_event(&format!("+1415555{i:04}"), &text))
        .collect();
    let large = signed_batch(&batch);
    assert!(large.body.len() > 2 * app.settings.max_body_bytes);
    assert_eq!(app.post_fixture(&large).await.status(), 200);
    assert_eq!(tap.collect_until_quiet(QUIET).await.len(), 100);
}

#[tokio::test]
async fn the_cap_is_configurable() {
    let amqp = require_broker!();
    let app = spawn_app(
        Some(&amqp),
        &[("TWILIO_EVENT_STREAMS_MAX_BODY_BYTES", "2048")],
    )
    .await;
    let small = signed_batch(&[inbound_event("+14155550100", "fits")]);
    assert!(small.body.len() < 2048);
    assert_eq!(app.post_fixture(&small).await.status(), 200);
    let large = signed_batch(&[inbound_event("+14155550100", &"z".repeat(4096))]);
    let response = app.post_fixture(&large).await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("2048"));
}

#[tokio::test]
async fn a_batch_of_200_events_is_published_concurrently_and_completely() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let batch: Vec<Value> = (0..200)
        .map(|i| inbound_event(&format!("+1415557{i:04}"), &format!("event {i}")))
        .collect();
    let expected: BTreeSet<String> = batch
        .iter()
        .map(|e| format!("twilio:{}", e["data"]["messageSid"].as_str().unwrap()))
        .collect();

    assert_eq!(app.post_fixture(&signed_batch(&batch)).await.status(), 200);
    let published = tap.collect_until_quiet(QUIET).await;
    assert_eq!(published.len(), 200);
    assert_eq!(
        message_ids(&published).into_iter().collect::<BTreeSet<_>>(),
        expected
    );

    // The most events in progress at once, observed once for this batch: more than one
    // (their confirms overlapped) and no more than the bound.
    let name = "ingress_egress_twilio_event_streams_batch_concurrency";
    assert_eq!(metric(&app, &format!("{name}_count"), &[]).await, 1.0);
    let peak = metric(&app, &format!("{name}_sum"), &[]).await;
    assert!(
        peak > 1.0,
        "events were published one at a time (peak {peak})"
    );
    assert_eq!(
        metric(&app, &format!("{name}_bucket"), &[("le", "32")]).await,
        1.0,
        "more than 32 events at once (peak {peak})"
    );
    assert_eq!(
        metric(
            &app,
            "ingress_egress_bus_publishes_total",
            &[("topic", "internal.ingress.v1"), ("result", "confirmed")]
        )
        .await,
        200.0
    );
}

#[tokio::test]
async fn events_of_one_sender_keep_their_batch_order() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::INGRESS).await;
    let chatty = "+14155550123";
    let batch: Vec<Value> = (0..60)
        .map(|i| {
            if i % 3 == 0 {
                inbound_event(chatty, &format!("part {i}"))
            } else {
                inbound_event(&format!("+1415558{i:04}"), &format!("other {i}"))
            }
        })
        .collect();
    let chatty_order: Vec<String> = batch
        .iter()
        .filter(|e| e["data"]["from"] == chatty)
        .map(|e| format!("twilio:{}", e["data"]["messageSid"].as_str().unwrap()))
        .collect();
    assert_eq!(chatty_order.len(), 20);

    assert_eq!(app.post_fixture(&signed_batch(&batch)).await.status(), 200);
    let published = tap.collect_until_quiet(QUIET).await;
    assert_eq!(published.len(), 60);
    let published_chatty: Vec<String> = published
        .iter()
        .filter(|d| {
            let envelope: Value = serde_json::from_slice(&d.data).unwrap();
            envelope["ingress"]["channel"] == chatty
        })
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(published_chatty, chatty_order);
}
