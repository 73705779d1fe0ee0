//! `POST /v1/messages`: the operator send publishes an egress event on `internal.egress.v1`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    helpers::{spawn_app, TestApp},
    require_broker,
};

const DEBUG_TOKEN: &str = "debug-token-for-operator-tests";
const OPERATOR_TOKEN: &str = "operator-token-for-operator-tests";

/// Keeps whatever egress consumer runs away from the real Twilio (nothing listens on port 9),
/// with a sender and a bot identity so sends to every kind of recipient are accepted.
const NO_TWILIO: [(&str, &str); 4] = [
    ("TWILIO_API_BASE_URL", "http://127.0.0.1:9"),
    ("TWILIO_CONVERSATIONS_BASE_URL", "http://127.0.0.1:9"),
    ("TWILIO_PHONE_NUMBER", "+15005550001"),
    ("TWILIO_IDENTITY", "operator-test-bot"),
];

async fn send(app: &TestApp, bearer: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request sent")
}

async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"]
        .as_str()
        .expect("error message")
        .to_owned()
}

fn vars<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut vars = NO_TWILIO.to_vec();
    vars.extend_from_slice(extra);
    vars
}

#[tokio::test]
async fn an_operator_send_publishes_an_egress_event() {
    let url = require_broker!();
    let app = spawn_app(
        Some(&url),
        &vars(&[
            ("OPERATOR_TOKEN", OPERATOR_TOKEN),
            ("DEBUG_TOKEN", DEBUG_TOKEN),
        ]),
    )
    .await;
    let mut tap = app.tap("internal.egress.v1").await;

    let response = send(
        &app,
        Some(OPERATOR_TOKEN),
        &json!({
            "to": "+15005550006",
            "text": "Hello from the operator test",
            "mediaUrls": ["https://example.com/owl.png"],
            "from": "+15005550001",
        }),
    )
    .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let correlation_id = accepted["correlationId"].as_str().expect("correlationId");
    let message_id = accepted["messageId"].as_str().expect("messageId");
    assert_eq!(accepted["delivery"], "published");
    uuid::Uuid::parse_str(correlation_id).expect("correlationId is a UUID");

    let (delivery, event) = tap.next_json().await;
    assert_eq!(delivery.routing_key.as_str(), "internal.egress.v1");
    let properties = &delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.as_str()),
        Some(message_id)
    );
    assert_eq!(
        properties.correlation_id().as_ref().map(|s| s.as_str()),
        Some(correlation_id)
    );
    assert_eq!(
        properties.kind().as_ref().map(|s| s.as_str()),
        Some("chat.message.v1")
    );
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );

    assert_eq!(event["v"], "2");
    assert_eq!(event["correlationId"], correlation_id);
    assert_eq!(event["type"], "chat.message.v1");
    assert_eq!(event["egress"]["connector"], "twilio");
    assert_eq!(event["egress"]["destination"], "internal.egress.v1");
    assert_eq!(event["egress"]["channel"], "+15005550006");
    assert_eq!(
        event["egress"]["metadata"]["twilio"]["from"],
        "+15005550001"
    );
    assert_eq!(event["message"]["role"], "assistant");
    assert_eq!(event["message"]["text"], "Hello from the operator test");
    assert_eq!(
        event["message"]["media"][0]["url"],
        "https://example.com/owl.png"
    );
    let candidates = event["candidates"].as_array().expect("candidates");
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0]["status"], "selected");
    assert_eq!(candidates[0]["text"], "Hello from the operator test");
    assert_eq!(event["routing"]["stage"], "initial");

    // DEBUG_TOKEN works as well; a Conversation recipient and a WhatsApp one are accepted.
    for to in [
        "CH0123456789abcdef0123456789abcdef",
        "whatsapp:+15005550006",
    ] {
        let response = send(&app, Some(DEBUG_TOKEN), &json!({"to": to, "text": "hi"})).await;
        assert_eq!(response.status(), 202);
        let (_, event) = tap.next_json().await;
        assert_eq!(event["egress"]["channel"], to);
    }
}

#[tokio::test]
async fn a_repeated_idempotency_key_is_published_once() {
    let url = require_broker!();
    let app = spawn_app(Some(&url), &vars(&[("OPERATOR_TOKEN", OPERATOR_TOKEN)])).await;
    let mut tap = app.tap("internal.egress.v1").await;
    let post = || {
        app.client
            .post(format!("{}/v1/messages", app.address))
            .bearer_auth(OPERATOR_TOKEN)
            .header("Idempotency-Key", "campaign-42-recipient-7")
            .json(&json!({"to": "+15005550006", "text": "once"}))
            .send()
    };
    let first: Value = post().await.unwrap().json().await.unwrap();
    let second_response = post().await.unwrap();
    assert_eq!(second_response.status(), 202);
    let second: Value = second_response.json().await.unwrap();
    assert_eq!(first["messageId"], "operator:campaign-42-recipient-7");
    assert_eq!(first["messageId"], second["messageId"]);
    assert_eq!(first["correlationId"], second["correlationId"]);
    assert_eq!(first["delivery"], "published");
    assert_eq!(second["delivery"], "duplicate");
    let published = tap.collect_until_quiet(Duration::from_millis(700)).await;
    assert_eq!(published.len(), 1);
}

#[tokio::test]
async fn the_operator_send_needs_a_token_when_one_is_set() {
    let app = spawn_app(
        None,
        &vars(&[
            ("OPERATOR_TOKEN", OPERATOR_TOKEN),
            ("DEBUG_TOKEN", DEBUG_TOKEN),
        ]),
    )
    .await;
    let body = json!({"to": "+15005550006", "text": "hi"});
    assert_error(send(&app, None, &body).await, 401, "unauthorized").await;
    assert_error(send(&app, Some("nope"), &body).await, 401, "unauthorized").await;
    assert_eq!(send(&app, Some(OPERATOR_TOKEN), &body).await.status(), 202);
    assert_eq!(send(&app, Some(DEBUG_TOKEN), &body).await.status(), 202);

    // Authorisation comes before parsing: a stranger learns nothing about the schema.
    for bad in [json!({"to": 1}), json!({"unknown": true}), json!("text")] {
        let message = assert_error(send(&app, None, &bad).await, 401, "unauthorized").await;
        assert!(!message.contains("unknown field"), "{message}");
    }
    let form = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("to=x")
        .send()
        .await
        .unwrap();
    assert_error(form, 401, "unauthorized").await;
}

#[tokio::test]
async fn without_tokens_it_is_open_in_development_and_disabled_in_production() {
    // Development, embedded bus: the event shows up in /_debug/events.
    let app = spawn_app(None, &vars(&[])).await;
    let response = send(
        &app,
        None,
        &json!({"to": "+15005550006", "text": "dev send"}),
    )
    .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let message_id = accepted["messageId"].as_str().unwrap();
    let events: Value = app
        .get(&format!("/_debug/events?messageId={message_id}"))
        .await
        .json()
        .await
        .unwrap();
    let events = events["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["routingKey"], "internal.egress.v1");
    assert_eq!(events[0]["body"]["candidates"][0]["text"], "dev send");

    // Production without DEBUG_TOKEN / OPERATOR_TOKEN: the route does not exist.
    let app = spawn_app(
        None,
        &vars(&[
            ("APP_ENV", "production"),
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ]),
    )
    .await;
    let body = json!({"to": "+15005550006", "text": "hi"});
    assert_error(send(&app, None, &body).await, 404, "not_found").await;
    assert_error(send(&app, Some("guess"), &body).await, 404, "not_found").await;
    // Malformed requests too: the route does not exist, whatever is sent.
    assert_error(send(&app, None, &json!({"to": 1})).await, 404, "not_found").await;
}

#[tokio::test]
async fn bad_requests_get_the_json_error_shape_and_publish_nothing() {
    let app = spawn_app(None, &vars(&[("OPERATOR_TOKEN", OPERATOR_TOKEN)])).await;
    let cases = [
        json!({"to": "5005550006", "text": "no plus"}),
        json!({"to": "+1 500 555 0006", "text": "spaces"}),
        json!({"to": "CH123", "text": "short sid"}),
        json!({"to": "+15005550006", "text": "   "}),
        json!({"to": "+15005550006"}),
        json!({"to": "+15005550006", "text": "x", "mediaUrls": ["not a url"]}),
        json!({"to": "+15005550006", "text": "x", "mediaUrls": ["file:///etc/passwd"]}),
        json!({"to": "+15005550006", "text": "x", "from": "nobody"}),
        json!({"to": "CH0123456789abcdef0123456789abcdef", "text": "x", "from": "+15005550001"}),
        json!({"to": "+15005550006", "text": "x", "unknown": true}),
        json!({"text": "no recipient"}),
        json!({"to": 15005550006u64, "text": "number, not string"}),
        json!({"to": "+15005550006", "text": "x".repeat(16_001)}),
    ];
    for case in &cases {
        let message = assert_error(
            send(&app, Some(OPERATOR_TOKEN), case).await,
            400,
            "bad_request",
        )
        .await;
        assert!(
            !message.contains("+15005550006"),
            "the error echoes the recipient: {message}"
        );
    }

    let malformed = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .bearer_auth(OPERATOR_TOKEN)
        .header("Content-Type", "application/json")
        .body("{\"to\": ")
        .send()
        .await
        .unwrap();
    assert_error(malformed, 400, "bad_request").await;
    let form = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .bearer_auth(OPERATOR_TOKEN)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("to=%2B15005550006&text=hi")
        .send()
        .await
        .unwrap();
    assert_error(form, 415, "unsupported_media_type").await;

    let events: Value = app.get("/_debug/events").await.json().await.unwrap();
    assert_eq!(events["events"], json!([]), "nothing was published");
}

#[tokio::test]
async fn a_send_the_configuration_cannot_carry_out_is_refused_naming_the_setting() {
    let sms = json!({"to": "+15005550006", "text": "hi"});
    let conversation = json!({"to": "CH0123456789abcdef0123456789abcdef", "text": "hi"});
    // Each case removes settings (an empty override removes a variable): what is removed, what
    // is sent, and the setting the answer must name.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a Value, &'a str);
    let cases: [Case; 5] = [
        (
            &[("TWILIO_PHONE_NUMBER", "")],
            &sms,
            "TWILIO_PHONE_NUMBER (or TWILIO_MESSAGING_SERVICE_SID) is not set",
        ),
        (
            &[("TWILIO_ACCOUNT_SID", "")],
            &sms,
            "TWILIO_ACCOUNT_SID is not set",
        ),
        (
            &[
                ("TWILIO_AUTH_TOKEN", ""),
                ("TWILIO_SECONDARY_AUTH_TOKEN", ""),
            ],
            &sms,
            "TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET) is not set",
        ),
        (
            &[("TWILIO_IDENTITY", "")],
            &conversation,
            "TWILIO_IDENTITY is not set",
        ),
        (
            &[("TWILIO_ACCOUNT_SID", ""), ("TWILIO_IDENTITY", "")],
            &conversation,
            "TWILIO_ACCOUNT_SID is not set",
        ),
    ];
    for (removed, body, names) in cases {
        let app = spawn_app(None, &vars(removed)).await;
        let message = assert_error(send(&app, None, body).await, 422, "not_configured").await;
        assert!(message.starts_with("cannot send: "), "{message}");
        assert!(message.contains(names), "{removed:?}: {message}");
        let events: Value = app.get("/_debug/events").await.json().await.unwrap();
        assert_eq!(
            events["events"],
            json!([]),
            "{removed:?}: nothing was published"
        );
    }

    // Without a default sender, a send that names its own is accepted, and a Conversation needs
    // no phone number.
    let app = spawn_app(None, &vars(&[("TWILIO_PHONE_NUMBER", "")])).await;
    let mut with_sender = sms.clone();
    with_sender["from"] = json!("+15005550001");
    assert_eq!(send(&app, None, &with_sender).await.status(), 202);
    assert_eq!(send(&app, None, &conversation).await.status(), 202);
    let app = spawn_app(
        None,
        &vars(&[
            ("TWILIO_PHONE_NUMBER", ""),
            (
                "TWILIO_MESSAGING_SERVICE_SID",
                "MG00000000000000000000000000000001",
            ),
        ]),
    )
    .await;
    assert_eq!(send(&app, None, &sms).await.status(), 202);
}

#[tokio::test]
async fn the_operation_is_documented_with_examples() {
    let app = spawn_app(None, &[]).await;
    let doc = app.openapi_document().await;
    let operation = &doc["paths"]["/v1/messages"]["post"];
    assert!(operation.is_object(), "POST /v1/messages is documented");
    let examples = &operation["requestBody"]["content"]["application/json"]["examples"];
    for name in ["1-sms", "2-mms", "3-whatsapp", "4-conversation"] {
        assert!(examples[name]["value"]["to"].is_string(), "example {name}");
    }
    assert!(operation["responses"]["202"].is_object());
    assert!(operation["responses"]["400"].is_object());
    assert_eq!(
        operation["responses"]["422"]["content"]["application/json"]["example"]["error"]["code"],
        "not_configured"
    );
    assert_eq!(operation["security"][0]["bearer"], json!([]));
}
