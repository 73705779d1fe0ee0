//! `GET /_debug/twilio`: bearer-guarded, disabled in production without a token, and never
//! showing a secret, a phone number or a message body.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{fixture, fixture_tokens, spawn_app, TestApp};

const DEBUG_TOKEN: &str = "debug-token-secret-7f3a9c";
const OPERATOR_TOKEN: &str = "operator-token-secret-1b2c3d";
const API_KEY: &str = "SK0123456789abcdef0123456789abcdef";
const API_SECRET: &str = "api-secret-value-5e6f7a8b";
const AMQP_PASSWORD: &str = "amqp-password-secret-9d8c7b";
const OUR_NUMBER: &str = "+15005550006";

async fn snapshot(app: &TestApp, bearer: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(format!("{}/_debug/twilio", app.address));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request sent")
}

async fn assert_error(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string());
}

#[tokio::test]
async fn the_snapshot_requires_the_debug_token_when_one_is_set() {
    let app = spawn_app(None, &[("DEBUG_TOKEN", DEBUG_TOKEN)]).await;

    let missing = snapshot(&app, None).await;
    assert_eq!(
        missing
            .headers()
            .get("www-authenticate")
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert_error(missing, 401, "unauthorized").await;
    assert_error(
        snapshot(&app, Some("wrong-token")).await,
        401,
        "unauthorized",
    )
    .await;
    let basic = app
        .client
        .get(format!("{}/_debug/twilio", app.address))
        .basic_auth("operator", Some(DEBUG_TOKEN))
        .send()
        .await
        .unwrap();
    assert_error(basic, 401, "unauthorized").await;

    let ok = snapshot(&app, Some(DEBUG_TOKEN)).await;
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["connector"], "twilio");
    assert!(body["state"] == "READY" || body["state"] == "DEGRADED");
    assert!(body["instanceId"].as_str().is_some_and(|id| !id.is_empty()));
}

#[tokio::test]
async fn the_operator_token_does_not_open_the_snapshot() {
    let app = spawn_app(
        None,
        &[
            ("DEBUG_TOKEN", DEBUG_TOKEN),
            ("OPERATOR_TOKEN", OPERATOR_TOKEN),
        ],
    )
    .await;
    assert_error(
        snapshot(&app, Some(OPERATOR_TOKEN)).await,
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn without_a_token_the_snapshot_is_open_in_development() {
    let app = spawn_app(None, &[]).await;
    assert_eq!(snapshot(&app, None).await.status(), 200);
}

#[tokio::test]
async fn without_a_token_the_snapshot_is_disabled_in_production() {
    // Production needs a broker URL and real Twilio credentials (the fixture ones are set by
    // the harness); nothing listens on port 1, which is fine: the route must not depend on it.
    let app = spawn_app(
        None,
        &[
            ("APP_ENV", "production"),
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ],
    )
    .await;
    assert!(app.settings.environment.get("TWILIO_ACCOUNT_SID").is_some());
    assert_error(snapshot(&app, None).await, 404, "not_found").await;
    assert_error(snapshot(&app, Some("anything")).await, 404, "not_found").await;
    assert_error(app.get("/_debug/events").await, 404, "not_found").await;
}

#[tokio::test]
async fn with_a_token_the_snapshot_works_in_production() {
    let app = spawn_app(
        None,
        &[
            ("APP_ENV", "production"),
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
            ("DEBUG_TOKEN", DEBUG_TOKEN),
        ],
    )
    .await;
    assert_error(snapshot(&app, None).await, 401, "unauthorized").await;
    let ok = snapshot(&app, Some(DEBUG_TOKEN)).await;
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["appEnv"], "production");
    assert_eq!(body["state"], "DEGRADED", "no broker on port 1: {body}");
}

/// Every secret the service knows, the SMS sender, our own number and the message body are
/// absent from the snapshot taken after a signed SMS went through, while the broker refuses us
/// (so the last-error paths are filled too).
#[tokio::test]
async fn the_snapshot_never_shows_secrets_phone_numbers_or_bodies() {
    let tokens = fixture_tokens();
    // A real broker (when one runs here) refuses these credentials; otherwise the connection is
    // refused. Either way the broker error ends up in the snapshot, and the outbox takes the SMS.
    let amqp_url = format!("amqp://snapshot-user:{AMQP_PASSWORD}@127.0.0.1:5672/%2f");
    let app = spawn_app(
        None,
        &[
            ("AMQP_URL", amqp_url.as_str()),
            ("DEBUG_TOKEN", DEBUG_TOKEN),
            ("OPERATOR_TOKEN", OPERATOR_TOKEN),
            ("TWILIO_API_KEY", API_KEY),
            ("TWILIO_API_SECRET", API_SECRET),
            ("TWILIO_PHONE_NUMBER", OUR_NUMBER),
            ("PUBLISH_CONFIRM_TIMEOUT_MS", "500"),
        ],
    )
    .await;

    let sms = fixture("sms_basic");
    let sender = sms
        .params
        .iter()
        .find(|(k, _)| k == "From")
        .map(|(_, v)| v.clone())
        .expect("fixture has From");
    let body = sms
        .params
        .iter()
        .find(|(k, _)| k == "Body")
        .map(|(_, v)| v.clone())
        .expect("fixture has Body");
    let response = app.post_fixture(&sms).await;
    assert_eq!(response.status(), 200, "the outbox takes the SMS");
    // A rejected one too, so the rejection counters move.
    let tampered = app.post_fixture(&fixture("sms_basic_tampered_body")).await;
    assert_eq!(tampered.status(), 403);

    // Let the broker connection fail at least once so its error is part of the snapshot.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let snapshot_json = loop {
        let response = snapshot(&app, Some(DEBUG_TOKEN)).await;
        assert_eq!(response.status(), 200);
        let json: Value = response.json().await.unwrap();
        let state = &json["broker"]["state"];
        let has_broker_error = state["lastError"].is_string() || state["last_error"].is_string();
        if has_broker_error {
            break json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker error never reached the snapshot: {json}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = serde_json::to_string(&snapshot_json).unwrap();

    let digits = |number: &str| number.trim_start_matches('+').to_owned();
    let forbidden = [
        ("primary auth token", tokens.primary_auth_token.clone()),
        ("secondary auth token", tokens.secondary_auth_token.clone()),
        ("API secret", API_SECRET.to_owned()),
        ("debug token", DEBUG_TOKEN.to_owned()),
        ("operator token", OPERATOR_TOKEN.to_owned()),
        ("AMQP password", AMQP_PASSWORD.to_owned()),
        ("sender's number", sender.clone()),
        ("sender's digits", digits(&sender)),
        ("our number", OUR_NUMBER.to_owned()),
        ("our number's digits", digits(OUR_NUMBER)),
        ("message body", body.clone()),
        ("message body, form-encoded", body.replace(' ', "+")),
    ];
    for (what, value) in &forbidden {
        assert!(
            !text.contains(value.as_str()),
            "the snapshot shows the {what}: {text}"
        );
    }

    // It is still a useful snapshot.
    assert_eq!(snapshot_json["state"], "DEGRADED", "{text}");
    let counters = &snapshot_json["twilio"]["counters"];
    assert!(
        counters["received"].as_f64().unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert!(
        counters["rejectedSignatures"].as_f64().unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(counters["outboxDepth"].as_u64().unwrap_or(0) >= 1, "{text}");
    assert!(
        snapshot_json["twilio"]["lastInboundAt"].is_string(),
        "{text}"
    );
    assert!(
        text.contains("snapshot-user") || text.contains("127.0.0.1"),
        "the redacted broker URL is shown: {text}"
    );
}

#[tokio::test]
async fn the_snapshot_lists_the_console_urls_and_the_signing_facts_without_tokens() {
    let tokens = fixture_tokens();
    let app = spawn_app(None, &[]).await;
    let body: Value = snapshot(&app, None).await.json().await.unwrap();
    let twilio = &body["twilio"];
    let base = &tokens.public_base_url;
    assert_eq!(
        twilio["consoleUrls"][0],
        json!({
            "webhook": "sms",
            "place": "Phone number (or Messaging Service) → A message comes in",
            "url": format!("{base}/webhooks/twilio/sms#rc=3&rp=all&ct=1000&rt=2750&tt=15000"),
        })
    );
    assert_eq!(twilio["consoleUrls"].as_array().unwrap().len(), 4);
    let fingerprint = |token: &str| {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(token.as_bytes())[..4])
    };
    assert_eq!(
        twilio["signing"],
        json!({
            "publicBaseUrl": base,
            "developmentToken": false,
            "authTokenFingerprint": fingerprint(&tokens.primary_auth_token),
            "secondaryAuthTokenFingerprint": fingerprint(&tokens.secondary_auth_token),
        })
    );
    let text = body.to_string();
    assert!(!text.contains(&tokens.primary_auth_token));
    assert!(!text.contains(&tokens.secondary_auth_token));

    // Without PUBLIC_BASE_URL there is nothing to paste yet.
    let app = spawn_app(None, &[("PUBLIC_BASE_URL", "")]).await;
    let body: Value = snapshot(&app, None).await.json().await.unwrap();
    assert_eq!(body["twilio"]["consoleUrls"], Value::Null);
    assert_eq!(body["twilio"]["signing"]["publicBaseUrl"], Value::Null);
}
