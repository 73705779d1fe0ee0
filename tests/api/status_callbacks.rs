//! `POST /webhooks/twilio/status` end to end: signed status callbacks in, status events on
//! `internal.egress.status.v1` out, deduplicated on MessageSid and MessageStatus.

use std::time::Duration;

use serde_json::Value;

use crate::conversations::{metric, param, QUIET};
use crate::helpers::{fixture, header, spawn_app};
use crate::require_broker;
use ingress_egress::envelope::topics;

/// The `correlationId` query parameter of a fixture's URL.
fn correlation(path_and_query: &str) -> Option<String> {
    let (_, query) = path_and_query.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("correlationId="))
        .map(str::to_owned)
}

#[tokio::test]
async fn every_status_callback_becomes_a_status_event() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::EGRESS_STATUS).await;
    let mut ingress = app.tap(topics::INGRESS).await;

    for name in [
        "status_queued",
        "status_sent",
        "status_delivered",
        "status_undelivered_30007",
        "status_failed_21610",
    ] {
        let f = fixture(name);
        let response = app.post_fixture(&f).await;
        assert_eq!(response.status(), 200, "{name}");
        assert!(response.text().await.unwrap().contains("<Response/>"));

        let (delivery, event) = tap.next_json().await;
        let sid = param(&f, "MessageSid");
        let status = param(&f, "MessageStatus");
        assert_eq!(event["messageSid"], sid.as_str(), "{name}");
        assert_eq!(event["status"], status.as_str(), "{name}");
        assert_eq!(event["to"], param(&f, "To").as_str(), "{name}");
        assert_eq!(event["from"], param(&f, "From").as_str(), "{name}");
        assert_eq!(event["provider"], "twilio");
        let at = chrono::DateTime::parse_from_rfc3339(event["at"].as_str().unwrap()).unwrap();
        assert!((chrono::Utc::now() - at.to_utc()).num_seconds().abs() < 60);
        assert_eq!(
            event["metadata"]["messagingServiceSid"],
            param(&f, "MessagingServiceSid").as_str()
        );
        let expected_code = f
            .params
            .iter()
            .find(|(k, _)| k == "ErrorCode")
            .map(|(_, v)| v.clone());
        match &expected_code {
            Some(code) => {
                assert_eq!(event["errorCode"], code.as_str(), "{name}");
                assert!(event["errorMessage"].is_string(), "{name}");
            }
            None => {
                assert!(event.get("errorCode").is_none(), "{name}");
                assert!(event.get("errorMessage").is_none(), "{name}");
            }
        }
        match correlation(&f.path_and_query) {
            Some(id) => {
                assert_eq!(event["correlationId"], id.as_str(), "{name}");
                assert_eq!(
                    delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .unwrap()
                        .as_str(),
                    id
                );
            }
            None => assert!(event.get("correlationId").is_none(), "{name}"),
        }

        assert_eq!(delivery.routing_key.as_str(), "internal.egress.status.v1");
        let props = &delivery.properties;
        assert_eq!(
            props.message_id().as_ref().unwrap().as_str(),
            format!("twilio:status:{sid}:{status}")
        );
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(props.kind().as_ref().unwrap().as_str(), "message.status.v1");
        assert_eq!(
            header(&delivery, "cloudEvents:type").as_deref(),
            Some("message.status.v1")
        );
    }
    assert!(ingress.next(Duration::from_millis(100)).await.is_none());
}

#[tokio::test]
async fn statuses_of_one_message_are_all_published_exact_repeats_once() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::EGRESS_STATUS).await;

    // One message (the same MessageSid) going queued → sent → delivered, and Twilio
    // redelivering callbacks.
    for name in [
        "status_queued",
        "status_sent",
        "status_sent",
        "status_delivered",
        "status_delivered_duplicate",
        "status_queued",
    ] {
        assert_eq!(
            app.post_fixture(&fixture(name)).await.status(),
            200,
            "{name}"
        );
    }
    let all = tap.collect_until_quiet(QUIET).await;
    let statuses: Vec<String> = all
        .iter()
        .map(|d| {
            let event: Value = serde_json::from_slice(&d.data).unwrap();
            event["status"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(statuses, ["queued", "sent", "delivered"]);
    let sids: Vec<Value> = all
        .iter()
        .map(|d| serde_json::from_slice::<Value>(&d.data).unwrap()["messageSid"].clone())
        .collect();
    assert!(
        sids.windows(2).all(|w| w[0] == w[1]),
        "one message: {sids:?}"
    );
    assert_eq!(
        metric(
            &app,
            "ingress_egress_webhook_requests_total",
            &[("route", "status"), ("outcome", "duplicate")]
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn a_tampered_status_callback_gets_403_and_publishes_nothing() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::EGRESS_STATUS).await;

    let tampered = fixture("status_tampered");
    assert!(!tampered.expect_valid);
    let response = app.post_fixture(&tampered).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_signature");

    // A genuine callback posted to a different correlation id: the query is signed too.
    let mut moved = fixture("status_delivered");
    moved.path_and_query =
        "/webhooks/twilio/status?correlationId=00000000-0000-0000-0000-000000000000".to_owned();
    assert_eq!(app.post_fixture(&moved).await.status(), 403);

    assert!(tap.next(QUIET).await.is_none());
}

#[tokio::test]
async fn a_signed_but_malformed_callback_gets_400_and_publishes_nothing() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::EGRESS_STATUS).await;
    let f = fixture("status_malformed_no_status");
    assert!(f.expect_valid);
    let response = app.post_fixture(&f).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("MessageStatus"));
    assert!(tap.next(QUIET).await.is_none());
}

#[tokio::test]
async fn the_part_of_a_split_message_is_carried_from_the_callback_url() {
    let amqp = require_broker!();
    let app = spawn_app(Some(&amqp), &[]).await;
    let mut tap = app.tap(topics::EGRESS_STATUS).await;
    let f = fixture("status_delivered_part2");
    assert_eq!(app.post_fixture(&f).await.status(), 200);
    let (_, event) = tap.next_json().await;
    assert_eq!(event["metadata"]["part"], 2);
    assert_eq!(
        event["correlationId"],
        correlation(&f.path_and_query).unwrap().as_str()
    );
    assert_eq!(event["status"], "delivered");
}
