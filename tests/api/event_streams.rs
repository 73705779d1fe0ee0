//! `POST /webhooks/twilio/event-streams` end to end: CloudEvents batches signed through
//! `bodySHA256` in, the same envelopes as the form webhooks out.

use std::time::Duration;

use serde_json::Value;

use crate::conversations::{metric, QUIET};
use crate::helpers::{fixture, spawn_app, Fixture};
use crate::require_broker;
use crate::sms_webhook::assert_valid_envelope;
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
    let ids: Vec<String> = all
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            format!(
                "twilio:{}",
                batch[0]["data"]["messageSid"].as_str().unwrap()
            ),
            format!(
                "twilio:{}",
                batch[1]["data"]["MessageSid"].as_str().unwrap()
            ),
        ],
        "batch order kept, the unknown type not published"
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
