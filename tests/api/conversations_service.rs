//! `TWILIO_CHAT_SERVICE_SID` set: the Conversations REST calls (egress replies, the bot's
//! auto-join) use the service-scoped paths `/v1/Services/{ChatServiceSid}/Conversations/…`,
//! checked by the fake against Twilio's OpenAPI document.

use std::time::Duration;

use serde_json::Value;

use crate::{
    conversations::{param, BOT, QUIET},
    egress_support::{
        delete_queue, egress_app, fake_twilio, next_matching, reply_to, EgressPublisher, IDENTITY,
    },
    fake_twilio::{service_response_problems, FakeTwilio, Route},
    helpers::{fixture, fixture_tokens, spawn_app},
    require_broker,
};

/// The Conversation Service of the fixtures' conversations.
const CHAT_SERVICE: &str = "IS00000000000000000000000000000001";
const CONVERSATION: &str = "CH0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn a_conversation_reply_uses_the_service_scoped_messages_path() {
    let url = require_broker!();
    let fake = fake_twilio().await;
    let app = egress_app(&url, &fake, &[("TWILIO_CHAT_SERVICE_SID", CHAT_SERVICE)]).await;
    let mut status_tap = app.tap("internal.egress.status.v1").await;
    let publisher = EgressPublisher::new(&app).await;

    let event = reply_to(CONVERSATION, "Hi from a non-default service");
    publisher.publish(&event).await;
    let id = event["correlationId"].as_str().unwrap().to_owned();
    let status = next_matching(&mut status_tap, |m| m["correlationId"] == id.as_str()).await;

    assert_eq!(status["status"], "sent", "{status}");
    assert!(
        status["providerSid"].as_str().unwrap().starts_with("IM"),
        "{status}"
    );
    let requests = fake.requests_to(Route::ConversationMessages);
    assert_eq!(requests.len(), 1, "exactly one request");
    let request = &requests[0];
    assert_eq!(
        request.path,
        format!("/v1/Services/{CHAT_SERVICE}/Conversations/{CONVERSATION}/Messages")
    );
    assert_eq!(request.path_params["ChatServiceSid"], CHAT_SERVICE);
    assert_eq!(request.path_params["ConversationSid"], CONVERSATION);
    assert_eq!(request.param("Author"), Some(IDENTITY));
    assert_eq!(request.param("Body"), Some("Hi from a non-default service"));
    assert!(request.idempotency_token.is_some());
    assert_eq!(fake.created(Route::ConversationMessages).len(), 1);
    assert!(fake.requests_to(Route::Messages).is_empty());
    fake.assert_no_violations();
    delete_queue(&url, &app.egress_queue).await;
}

#[tokio::test]
async fn the_bot_joins_through_the_service_scoped_participants_path() {
    let amqp = require_broker!();
    let tokens = fixture_tokens();
    let fake = FakeTwilio::start(&tokens.account_sid, &tokens.primary_auth_token).await;
    let app = spawn_app(
        Some(&amqp),
        &[
            ("TWILIO_IDENTITY", BOT),
            ("TWILIO_CONVERSATIONS_BASE_URL", &fake.base_url),
            ("TWILIO_CHAT_SERVICE_SID", CHAT_SERVICE),
        ],
    )
    .await;
    let added = fixture("conv_on_conversation_added");
    let conversation = param(&added, "ConversationSid");
    assert_eq!(param(&added, "ChatServiceSid"), CHAT_SERVICE);

    let response = app.post_fixture(&added).await;
    assert_eq!(response.status(), 200);
    let requests = fake
        .wait_for_requests(Route::ConversationParticipants, 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        requests[0].path,
        format!("/v1/Services/{CHAT_SERVICE}/Conversations/{conversation}/Participants")
    );
    assert_eq!(requests[0].path_params["ChatServiceSid"], CHAT_SERVICE);
    assert_eq!(requests[0].path_params["ConversationSid"], conversation);
    assert_eq!(requests[0].param("Identity"), Some(BOT));

    // A later announcement of the same conversation: no second join.
    let response = app
        .post_fixture(&fixture("conv_on_participant_added"))
        .await;
    assert_eq!(response.status(), 200);
    tokio::time::sleep(QUIET).await;
    assert_eq!(fake.requests_to(Route::ConversationParticipants).len(), 1);
    assert_eq!(fake.created(Route::ConversationParticipants).len(), 1);
    fake.assert_no_violations();
    delete_queue(&amqp, &app.egress_queue).await;
}

/// The fake itself (no broker): service-scoped creates get the service-scoped resource shape,
/// and a `ChatServiceSid` breaking the document's pattern is a violation.
#[tokio::test]
async fn fake_twilio_serves_and_checks_the_service_scoped_routes() {
    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "auth-token-secret";
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    let post = |service: &str, what: &str, params: Vec<(&'static str, &'static str)>| {
        let url = format!(
            "{}/v1/Services/{service}/Conversations/{CONVERSATION}/{what}",
            fake.base_url
        );
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .basic_auth(ACCOUNT, Some(TOKEN))
                .form(&params)
                .send()
                .await
                .expect("request to the fake");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("JSON body");
            (status, body)
        }
    };

    let (status, participant) = post(CHAT_SERVICE, "Participants", vec![("Identity", "bot")]).await;
    assert_eq!(status, 201, "{participant}");
    let problems = service_response_problems(Route::ConversationParticipants, &participant);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(participant["chat_service_sid"], CHAT_SERVICE);
    assert_eq!(participant["conversation_sid"], CONVERSATION);
    assert!(participant["url"]
        .as_str()
        .unwrap()
        .contains(&format!("/v1/Services/{CHAT_SERVICE}/Conversations/")));

    let (status, message) = post(
        CHAT_SERVICE,
        "Messages",
        vec![("Author", "bot"), ("Body", "hi")],
    )
    .await;
    assert_eq!(status, 201, "{message}");
    let problems = service_response_problems(Route::ConversationMessages, &message);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(message["chat_service_sid"], CHAT_SERVICE);
    assert_eq!(message["participant_sid"], participant["sid"]);

    // Joining again answers 409 / 50433, as on the default-service path.
    let (status, body) = post(CHAT_SERVICE, "Participants", vec![("Identity", "bot")]).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], 50433);
    fake.assert_no_violations();

    // Not an `IS…` SID: the document's pattern for ChatServiceSid is broken.
    let (status, _) = post(
        "MG00000000000000000000000000000001",
        "Messages",
        vec![("Body", "x")],
    )
    .await;
    assert_eq!(status, 400);
    let violations = fake.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].contains("path parameter `ChatServiceSid`"),
        "{violations:?}"
    );
    assert_eq!(fake.requests_to(Route::ConversationMessages).len(), 2);
    assert_eq!(fake.created(Route::ConversationMessages).len(), 1);
    assert_eq!(fake.created(Route::ConversationParticipants).len(), 1);
}
