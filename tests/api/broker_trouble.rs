//! A bad day at the broker, seen through a proxy: a stall (connected, but nothing confirmed)
//! makes the service not ready and says why; a cut while egress sends are in flight makes the
//! broker redeliver them, and the send ledger keeps them from being sent again.

use std::time::Duration;

use serde_json::Value;

use crate::{
    broker_proxy::BrokerProxy,
    egress_support::{fake_twilio, reply_to, twilio_vars, EgressPublisher},
    fake_twilio::{Reply, Route},
    helpers::{fixture, spawn_app, BusTap, TestApp},
    require_broker,
};

async fn readiness(app: &TestApp) -> (u16, Value) {
    let response = app.get("/readyz").await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_stalled_broker_makes_the_service_not_ready_and_says_why() {
    let direct = require_broker!();
    let mut proxy = BrokerProxy::unstarted();
    proxy.start().await;
    let url = proxy.url();
    let mut app = spawn_app(Some(&url), &[("PUBLISH_CONFIRM_TIMEOUT_MS", "300")]).await;
    // Cleaned up through the broker itself: the proxy runs on this test's runtime, which the
    // clean-up blocks.
    app.amqp_url = Some(direct);
    assert_eq!(readiness(&app).await.0, 200);

    proxy.stall();
    let response = app.post_fixture(&fixture("sms_basic")).await;
    assert_eq!(response.status(), 200, "accepted into the outbox");
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["broker"], "connected",
        "the connection itself looks fine"
    );
    assert_eq!(body["brokerConfirms"], "timing_out");
    let snapshot: Value = app.get("/_debug/twilio").await.json().await.unwrap();
    assert!(
        snapshot["degradedReason"]
            .as_str()
            .is_some_and(|r| r.contains("not confirming")),
        "{snapshot}"
    );
    assert!(snapshot["brokerConfirmTimeouts"].as_u64() >= Some(1));

    proxy.resume();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = readiness(&app).await;
        if status == 200 {
            assert_eq!(body["brokerConfirms"], "ok");
            assert_eq!(body["outboxDepth"], 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready again: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn sends_in_flight_during_a_broker_cut_are_not_sent_again() {
    let direct = require_broker!();
    let mut proxy = BrokerProxy::unstarted();
    proxy.start().await;
    let fake = fake_twilio().await;
    const IN_FLIGHT: usize = 8;
    for _ in 0..IN_FLIGHT {
        fake.enqueue(
            Route::Messages,
            Reply::delayed(Duration::from_millis(1500), Reply::Success),
        );
    }
    let vars = twilio_vars(&fake);
    let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut app = spawn_app(Some(&proxy.url()), &borrowed).await;
    app.amqp_url = Some(direct.clone());
    // The test publishes and watches directly, not through the proxy.
    let publisher =
        EgressPublisher::connect(&direct, &app.exchange, &app.settings.bus.prefix).await;
    let mut status = BusTap::bind(&direct, &app.exchange, "internal.egress.status.v1").await;

    let events: Vec<Value> = (0..IN_FLIGHT)
        .map(|i| reply_to(&format!("+1415555020{i}"), "during the blip"))
        .collect();
    for event in &events {
        publisher.publish(event).await;
    }
    // Every send is at Twilio, waiting for its answer: now the broker goes away for 3 s.
    fake.wait_for_requests(Route::Messages, IN_FLIGHT, Duration::from_secs(20))
        .await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.start().await;

    // Each event ends "sent" once from the first attempt and, when its ack was lost with the
    // connection, once more from the redelivery, which the ledger answers without Twilio.
    let mut outcomes: Vec<Value> = Vec::new();
    while let Some(delivery) = status.next(Duration::from_secs(5)).await {
        let outcome: Value = serde_json::from_slice(&delivery.data).unwrap();
        if outcome["connector"].is_string() {
            outcomes.push(outcome);
        }
    }
    for event in &events {
        let id = event["correlationId"].as_str().unwrap();
        assert!(
            outcomes
                .iter()
                .any(|o| o["correlationId"] == id && o["status"] == "sent"),
            "{id} was not sent: {outcomes:?}"
        );
    }
    assert!(
        outcomes
            .iter()
            .any(|o| o["partDetails"][0]["resolvedBy"] == "ledger"),
        "some event was redelivered after the cut: {outcomes:?}"
    );
    assert_eq!(
        fake.created(Route::Messages).len(),
        IN_FLIGHT,
        "no duplicate SMS"
    );
    assert_eq!(fake.requests_to(Route::Messages).len(), IN_FLIGHT);
    fake.assert_no_violations();
}
