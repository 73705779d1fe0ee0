//! Egress once in effect against a Twilio without request idempotency (the fake's default):
//! whatever happens to the answer of a create — it times out, it is a 5xx although the message
//! was created, or the service is killed between the send and the ack — exactly one message
//! exists at Twilio afterwards, for Messages and for Conversations, and the status event says
//! how the earlier attempt was resolved.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    egress_support::{
        egress_app, fake_twilio, killable_vars, next_matching, reply_to, EgressPublisher,
        KillableApp, FROM,
    },
    fake_twilio::{FakeTwilio, Reply, Route},
    helpers::{delete_broker_objects, fixture_tokens, BusTap, TestApp},
    require_broker,
};

const WAIT: Duration = Duration::from_secs(20);
const CONVERSATION: &str = "CH00000000000000000000000000000abc";

/// The egress outcome (`egress.status.v1`, which names its connector) of `event` on `tap`;
/// delivery receipts of the same message are passed over.
async fn status_of(tap: &mut BusTap, event: &Value) -> Value {
    let id = event["correlationId"].as_str().unwrap().to_owned();
    next_matching(tap, |s| {
        s["correlationId"] == id.as_str() && s["connector"].is_string()
    })
    .await
}

/// The one resource Twilio holds for `route`, checked against the status event.
fn assert_exactly_one(fake: &FakeTwilio, route: Route, status: &Value, resolved_by: &str) {
    let created = fake.created(route);
    assert_eq!(created.len(), 1, "exactly one at Twilio");
    let resources = match route {
        Route::Messages => fake.messages(),
        _ => fake.conversation_messages(),
    };
    assert_eq!(resources.len(), 1);
    assert_eq!(status["status"], "sent", "{status}");
    assert_eq!(status["providerSid"], resources[0]["sid"], "{status}");
    assert_eq!(
        status["partDetails"][0]["resolvedBy"], resolved_by,
        "{status}"
    );
    fake.assert_no_violations();
}

/// An app whose Twilio requests give up after one second.
async fn impatient_app(url: &str, fake: &FakeTwilio) -> (TestApp, BusTap, EgressPublisher) {
    let app = egress_app(url, fake, &[("TWILIO_REQUEST_TIMEOUT_MS", "1000")]).await;
    let status = app.tap("internal.egress.status.v1").await;
    let publisher = EgressPublisher::new(&app).await;
    (app, status, publisher)
}

#[tokio::test]
async fn a_message_whose_answer_times_out_is_found_not_sent_again() {
    let url = require_broker!();
    let fake = fake_twilio().await;
    // Created on arrival; the answer comes after the client gave up.
    fake.enqueue(
        Route::Messages,
        Reply::delayed(Duration::from_secs(3), Reply::Success),
    );
    let (_app, mut status, publisher) = impatient_app(&url, &fake).await;
    let event = reply_to("+14155550181", "The answer never came");
    publisher.publish(&event).await;
    let status = status_of(&mut status, &event).await;
    assert_exactly_one(&fake, Route::Messages, &status, "listing");
    assert_eq!(fake.requests_to(Route::Messages).len(), 1, "no resend");
}

#[tokio::test]
async fn a_conversation_message_whose_answer_times_out_is_found_by_its_key() {
    let url = require_broker!();
    let fake = fake_twilio().await;
    fake.enqueue(
        Route::ConversationMessages,
        Reply::delayed(Duration::from_secs(3), Reply::Success),
    );
    let (_app, mut status, publisher) = impatient_app(&url, &fake).await;
    let event = reply_to(CONVERSATION, "The answer never came");
    publisher.publish(&event).await;
    let status = status_of(&mut status, &event).await;
    assert_exactly_one(&fake, Route::ConversationMessages, &status, "attributes");
    assert_eq!(fake.requests_to(Route::ConversationMessages).len(), 1);
    let lookups = fake.requests_to(Route::ListConversationMessages);
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].query_param("Order"), Some("desc"));
}

#[tokio::test]
async fn a_conversation_message_created_before_a_500_is_found_by_its_key() {
    let url = require_broker!();
    let fake = fake_twilio().await;
    fake.enqueue(
        Route::ConversationMessages,
        Reply::CreatedButFailed { status: 500 },
    );
    let app = egress_app(&url, &fake, &[]).await;
    let mut status = app.tap("internal.egress.status.v1").await;
    let publisher = EgressPublisher::new(&app).await;
    let event = reply_to(CONVERSATION, "Created, but we saw a 500");
    publisher.publish(&event).await;
    let status = status_of(&mut status, &event).await;
    assert_exactly_one(&fake, Route::ConversationMessages, &status, "attributes");
    let created = &fake.conversation_messages()[0];
    let attributes: Value = serde_json::from_str(created["attributes"].as_str().unwrap()).unwrap();
    assert_eq!(attributes["origin"], "ingress-egress");
    assert!(attributes["key"].is_string(), "{attributes}");
    assert_eq!(created["author"], crate::egress_support::IDENTITY);
}

/// Kills the service while Twilio holds the create's answer, then starts it again on the same
/// outbox directory: the redelivered event finds what the first attempt created.
async fn killed_between_send_and_ack(
    url: String,
    target: &str,
    route: Route,
) -> (FakeTwilio, Value) {
    let fake = fake_twilio().await;
    fake.enqueue(
        route,
        Reply::delayed(Duration::from_secs(30), Reply::Success),
    );
    let outbox = tempfile::tempdir().unwrap();
    let vars = killable_vars(&url, &fake, outbox.path());
    let exchange = vars["AMQP_EXCHANGE"].clone();
    let queue = vars["AMQP_EGRESS_QUEUE"].clone();
    let mut first = KillableApp::spawn(&url, vars.clone()).await;
    let mut status = BusTap::bind(&url, &exchange, "internal.egress.status.v1").await;
    let publisher = EgressPublisher::connect(&url, &exchange, "").await;

    let event = reply_to(target, "Only once, please");
    publisher.publish(&event).await;
    fake.wait_for_requests(route, 1, WAIT).await;
    first.kill();

    let again = KillableApp::spawn(&url, vars).await;
    let sent = status_of(&mut status, &event).await;
    drop(again);
    delete_broker_objects(&url, &exchange, &queue);
    (fake, sent)
}

#[tokio::test]
async fn a_message_is_not_sent_twice_across_a_kill_between_send_and_ack() {
    let url = require_broker!();
    let (fake, status) = killed_between_send_and_ack(url, "+14155550182", Route::Messages).await;
    assert_exactly_one(&fake, Route::Messages, &status, "listing");
    assert_eq!(fake.requests_to(Route::Messages).len(), 1, "no resend");
}

#[tokio::test]
async fn a_conversation_message_is_not_sent_twice_across_a_kill_between_send_and_ack() {
    let url = require_broker!();
    let (fake, status) =
        killed_between_send_and_ack(url, CONVERSATION, Route::ConversationMessages).await;
    assert_exactly_one(&fake, Route::ConversationMessages, &status, "attributes");
    assert_eq!(fake.requests_to(Route::ConversationMessages).len(), 1);
}

#[tokio::test]
async fn a_status_callback_tells_what_an_ambiguous_send_created() {
    let url = require_broker!();
    let fake = fake_twilio().await;
    fake.enqueue(Route::Messages, Reply::CreatedButFailed { status: 502 });
    // Long enough for the test to deliver the callback Twilio would send.
    let app = egress_app(&url, &fake, &[("TWILIO_RESOLVE_WAIT_MS", "15000")]).await;
    let mut status = app.tap("internal.egress.status.v1").await;
    let publisher = EgressPublisher::new(&app).await;
    let event = reply_to("+14155550183", "Told by the callback");
    publisher.publish(&event).await;

    let create = fake
        .wait_for_requests(Route::Messages, 1, WAIT)
        .await
        .remove(0);
    let callback = url::Url::parse(create.param("StatusCallback").expect("a status callback"))
        .expect("an absolute URL");
    let names: Vec<String> = callback
        .query_pairs()
        .map(|(k, _)| k.into_owned())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "the callback's query is sorted");
    assert!(names.contains(&"partKey".to_owned()));

    // Twilio's first callback for the message it created (status `queued`).
    let created = &fake.messages()[0];
    let sid = created["sid"].as_str().unwrap();
    let tokens = fixture_tokens();
    let path_and_query = format!("{}?{}", callback.path(), callback.query().unwrap());
    let response = app
        .post_signed_form(
            &path_and_query,
            &[
                ("MessageSid", sid),
                ("MessageStatus", "queued"),
                ("To", "+14155550183"),
                ("From", FROM),
                ("AccountSid", tokens.account_sid.as_str()),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);

    let status = status_of(&mut status, &event).await;
    assert_exactly_one(&fake, Route::Messages, &status, "status_callback");
    assert!(
        fake.requests_to(Route::ListMessages).is_empty(),
        "the callback answered before any listing"
    );
    assert_eq!(json!(fake.requests_to(Route::Messages).len()), json!(1));
}
