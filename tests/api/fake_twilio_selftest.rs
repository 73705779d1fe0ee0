//! Self-tests of the fake Twilio REST server (no broker needed).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake_twilio::{response_problems, vendored_dir, FakeTwilio, Reply, Route};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "auth-token-secret";
const CONVERSATION: &str = "CHfedcba9876543210fedcba9876543210";
const SERVICE: &str = "MG00112233445566778899aabbccddeeff";

fn messages_url(fake: &FakeTwilio) -> String {
    format!(
        "{}/2010-04-01/Accounts/{ACCOUNT}/Messages.json",
        fake.base_url
    )
}

fn conversation_url(fake: &FakeTwilio, what: &str) -> String {
    format!("{}/v1/Conversations/{CONVERSATION}/{what}", fake.base_url)
}

async fn post_form(
    url: &str,
    params: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(params);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request to the fake");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.expect("JSON body");
    (status, headers, body)
}

fn assert_twilio_error_shape(body: &Value, status: u16, code: u64) {
    let object = body.as_object().expect("error body is an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "more_info", "status"], "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert_eq!(
        body["more_info"],
        format!("https://www.twilio.com/docs/errors/{code}"),
        "{body}"
    );
}

#[tokio::test]
async fn fake_twilio_conformant_message_create_gets_a_spec_shaped_201() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    let (status, _, body) = post_form(
        &messages_url(&fake),
        &[
            ("To", "+15558675310"),
            ("From", "+15017122661"),
            ("Body", "Hello there"),
            ("StatusCallback", "https://example.com/status"),
            ("AddressRetention", "retain"),
            ("ProvideFeedback", "true"),
        ],
        &[("I-Twilio-Idempotency-Token", "tok-1")],
    )
    .await;

    assert_eq!(status, 201, "{body}");
    assert_eq!(Route::Messages.success_status(), 201);
    assert!(
        response_problems(Route::Messages, &body).is_empty(),
        "{:?}",
        response_problems(Route::Messages, &body)
    );
    let sid = body["sid"].as_str().unwrap();
    assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["account_sid"], ACCOUNT);
    assert_eq!(body["to"], "+15558675310");
    assert_eq!(body["from"], "+15017122661");
    assert_eq!(body["body"], "Hello there");
    assert_eq!(body["direction"], "outbound-api");
    assert_eq!(body["num_segments"], "1");
    assert!(
        chrono::DateTime::parse_from_rfc2822(body["date_created"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    assert_eq!(
        body["uri"],
        format!("/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}.json")
    );

    fake.assert_no_violations();
    let requests = fake.requests_to(Route::Messages);
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path_params["AccountSid"], ACCOUNT);
    assert_eq!(request.param("Body"), Some("Hello there"));
    assert_eq!(request.idempotency_token.as_deref(), Some("tok-1"));
    assert!(request
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/x-www-form-urlencoded"));
    assert_eq!(fake.created(Route::Messages).len(), 1);
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn fake_twilio_mms_through_a_messaging_service_echoes_media() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    let (status, _, body) = post_form(
        &messages_url(&fake),
        &[
            ("To", "+15558675310"),
            ("MessagingServiceSid", SERVICE),
            ("MediaUrl", "https://example.com/a.jpg"),
            ("MediaUrl", "https://example.com/b.jpg"),
        ],
        &[],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(response_problems(Route::Messages, &body).is_empty());
    assert!(body["sid"].as_str().unwrap().starts_with("MM"));
    assert_eq!(body["num_media"], "2");
    assert_eq!(body["from"], Value::Null);
    assert_eq!(body["messaging_service_sid"], SERVICE);
    let request = &fake.requests_to(Route::Messages)[0];
    assert_eq!(
        request.params_named("MediaUrl"),
        ["https://example.com/a.jpg", "https://example.com/b.jpg"]
    );
    fake.assert_no_violations();
}

#[tokio::test]
async fn fake_twilio_missing_to_and_unknown_parameter_are_violations() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;

    let (status, _, body) = post_form(
        &messages_url(&fake),
        &[("From", "+15017122661"), ("Body", "hi")],
        &[],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("`To`"), "{body}");
    assert_eq!(fake.violations().len(), 1, "{:?}", fake.violations());
    assert!(fake.violations()[0].contains("required parameter `To`"));

    let (status, _, body) = post_form(
        &messages_url(&fake),
        &[
            ("To", "+15558675310"),
            ("From", "+15017122661"),
            ("Body", "hi"),
            ("Foo", "bar"),
        ],
        &[],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let violations = fake.violations();
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(
        violations[1].contains("parameter `Foo` is not defined"),
        "{violations:?}"
    );
    // Violating requests are recorded but never create anything.
    assert_eq!(fake.requests_to(Route::Messages).len(), 2);
    assert!(fake.created(Route::Messages).is_empty());
}

#[tokio::test]
async fn fake_twilio_checks_alternatives_enums_patterns_content_type_and_paths() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    let url = messages_url(&fake);

    // Neither Body/MediaUrl/ContentSid nor From/MessagingServiceSid.
    let (status, _, _) = post_form(&url, &[("To", "+15558675310")], &[]).await;
    assert_eq!(status, 400);
    let v = fake.violations();
    assert!(
        v.iter()
            .any(|v| v.contains("`Body`, `MediaUrl`, `ContentSid`")),
        "{v:?}"
    );
    assert!(
        v.iter()
            .any(|v| v.contains("`From`, `MessagingServiceSid`")),
        "{v:?}"
    );

    // An enum, a pattern and a boolean.
    let before = fake.violations().len();
    let (status, _, _) = post_form(
        &url,
        &[
            ("To", "+15558675310"),
            ("MessagingServiceSid", "MG123"),
            ("Body", "hi"),
            ("AddressRetention", "keep"),
            ("SendAsMms", "yes"),
        ],
        &[],
    )
    .await;
    assert_eq!(status, 400);
    let v = &fake.violations()[before..];
    assert_eq!(v.len(), 4, "{v:?}"); // pattern + length, enum, boolean
    assert!(v
        .iter()
        .any(|v| v.contains("AddressRetention") && v.contains("allowed values")));
    assert!(v
        .iter()
        .any(|v| v.contains("MessagingServiceSid") && v.contains("pattern")));
    assert!(v
        .iter()
        .any(|v| v.contains("SendAsMms") && v.contains("boolean")));

    // A malformed AccountSid in the path.
    let before = fake.violations().len();
    let bad = format!("{}/2010-04-01/Accounts/AC123/Messages.json", fake.base_url);
    let (status, _, _) = post_form(
        &bad,
        &[
            ("To", "+15558675310"),
            ("From", "+15017122661"),
            ("Body", "hi"),
        ],
        &[],
    )
    .await;
    assert_eq!(status, 400);
    assert!(fake.violations()[before..]
        .iter()
        .any(|v| v.contains("path parameter `AccountSid`")));

    // JSON instead of a form.
    let before = fake.violations().len();
    let response = reqwest::Client::new()
        .post(&url)
        .basic_auth(ACCOUNT, Some(TOKEN))
        .json(&json!({"To": "+15558675310", "From": "+15017122661", "Body": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(fake.violations()[before..]
        .iter()
        .any(|v| v.contains("Content-Type must be `application/x-www-form-urlencoded`")));

    // A path that is in no document, and an operation the fake does not emulate.
    let before = fake.violations().len();
    let nowhere = format!("{}/2010-04-01/Accounts/{ACCOUNT}/Messages", fake.base_url);
    let (status, _, _) = post_form(&nowhere, &[("To", "+1")], &[]).await;
    assert_eq!(status, 400);
    let fetch = format!(
        "{}/2010-04-01/Accounts/{ACCOUNT}/Messages/SM0123456789abcdef0123456789abcdef.json",
        fake.base_url
    );
    let response = reqwest::Client::new()
        .get(&fetch)
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let v = &fake.violations()[before..];
    assert!(v[0].contains("no path in"), "{v:?}");
    assert!(
        v.iter()
            .any(|v| v.contains("FetchMessage") && v.contains("does not emulate")),
        "{v:?}"
    );
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.route != Some(Route::ConversationMessages)));
}

#[tokio::test]
async fn fake_twilio_wrong_or_missing_auth_is_401_and_a_violation() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    let params = [
        ("To", "+15558675310"),
        ("From", "+15017122661"),
        ("Body", "hi"),
    ];

    let response = reqwest::Client::new()
        .post(messages_url(&fake))
        .basic_auth(ACCOUNT, Some("wrong"))
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_twilio_error_shape(&body, 401, 20003);

    let response = reqwest::Client::new()
        .post(messages_url(&fake))
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let v = fake.violations();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v.iter().all(|v| v.contains("authentication")), "{v:?}");
    assert!(
        !v.iter().any(|v| v.contains("wrong")),
        "never echo the password: {v:?}"
    );
    assert!(fake.created(Route::Messages).is_empty());
}

#[tokio::test]
async fn fake_twilio_scripted_429_with_retry_after_then_success() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    fake.enqueue(
        Route::Messages,
        Reply::Status {
            status: 429,
            retry_after: Some(2),
            body: None,
        },
    );
    let params = [
        ("To", "+15558675310"),
        ("From", "+15017122661"),
        ("Body", "hi"),
    ];
    let token = [("I-Twilio-Idempotency-Token", "retry-me")];

    let (status, headers, body) = post_form(&messages_url(&fake), &params, &token).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "2");
    assert_twilio_error_shape(&body, 429, 20429);
    assert!(fake.created(Route::Messages).is_empty());

    let (status, _, body) = post_form(&messages_url(&fake), &params, &token).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(fake.created(Route::Messages).len(), 1);
    assert_eq!(fake.requests_to(Route::Messages).len(), 2);
    fake.assert_no_violations();
}

#[tokio::test]
async fn fake_twilio_idempotency_token_replays_the_same_resource_when_asked_to() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    fake.set_idempotency_emulation(true);
    let params = [
        ("To", "+15558675310"),
        ("From", "+15017122661"),
        ("Body", "hi"),
    ];
    let url = messages_url(&fake);

    let (s1, _, first) = post_form(&url, &params, &[("I-Twilio-Idempotency-Token", "a")]).await;
    let (s2, _, again) = post_form(&url, &params, &[("I-Twilio-Idempotency-Token", "a")]).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first["sid"], again["sid"]);
    assert_eq!(first, again);
    assert_eq!(fake.created(Route::Messages).len(), 1);

    let (_, _, other) = post_form(&url, &params, &[("I-Twilio-Idempotency-Token", "b")]).await;
    assert_ne!(other["sid"], first["sid"]);
    // Without a token every success creates.
    post_form(&url, &params, &[]).await;
    post_form(&url, &params, &[]).await;
    assert_eq!(fake.created(Route::Messages).len(), 4);
    assert_eq!(fake.requests_to(Route::Messages).len(), 5);

    // A delayed success is created on arrival: a retry with the same token while the first
    // answer is still pending gets the same resource, and only one is created.
    fake.enqueue(
        Route::Messages,
        Reply::delayed(Duration::from_secs(2), Reply::Success),
    );
    let slow_url = url.clone();
    let slow = tokio::spawn(async move {
        post_form(
            &slow_url,
            &params,
            &[("I-Twilio-Idempotency-Token", "slow")],
        )
        .await
    });
    fake.wait_for_requests(Route::Messages, 6, Duration::from_secs(5))
        .await;
    let (_, _, retry) = post_form(&url, &params, &[("I-Twilio-Idempotency-Token", "slow")]).await;
    assert!(
        !slow.is_finished(),
        "the retry is answered while the original is still delayed"
    );
    let (status, _, original) = slow.await.unwrap();
    assert_eq!(status, 201);
    assert_eq!(original["sid"], retry["sid"]);
    assert_eq!(fake.created(Route::Messages).len(), 5);
    fake.assert_no_violations();
}

#[tokio::test]
async fn fake_twilio_conversation_message_create() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    let url = conversation_url(&fake, "Messages");
    let (status, _, body) = post_form(
        &url,
        &[
            ("Author", "bot"),
            ("Body", "hello"),
            ("Attributes", "{\"k\":1}"),
        ],
        &[("X-Twilio-Webhook-Enabled", "true")],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(Route::ConversationMessages.success_status(), 201);
    assert!(
        response_problems(Route::ConversationMessages, &body).is_empty(),
        "{:?}",
        response_problems(Route::ConversationMessages, &body)
    );
    assert!(body["sid"].as_str().unwrap().starts_with("IM"));
    assert_eq!(body["conversation_sid"], CONVERSATION);
    assert_eq!(body["author"], "bot");
    assert_eq!(body["body"], "hello");
    assert_eq!(body["attributes"], "{\"k\":1}");
    assert_eq!(body["index"], 0);
    assert_eq!(body["account_sid"], ACCOUNT);
    assert!(chrono::DateTime::parse_from_rfc3339(body["date_created"].as_str().unwrap()).is_ok());

    let (_, _, second) = post_form(&url, &[("Body", "again")], &[]).await;
    assert_eq!(second["index"], 1);
    assert_eq!(second["author"], "system");
    fake.assert_no_violations();
    let request = &fake.requests_to(Route::ConversationMessages)[0];
    assert_eq!(request.path_params["ConversationSid"], CONVERSATION);
    assert_eq!(request.header("X-Twilio-Webhook-Enabled"), Some("true"));

    // A header parameter outside its enum.
    let (status, _, _) = post_form(
        &url,
        &[("Body", "x")],
        &[("X-Twilio-Webhook-Enabled", "yes")],
    )
    .await;
    assert_eq!(status, 400);
    let v = fake.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("X-Twilio-Webhook-Enabled"), "{v:?}");
    assert_eq!(fake.created(Route::ConversationMessages).len(), 2);
}

#[tokio::test]
async fn fake_twilio_conversation_participant_create_and_already_exists() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    let url = conversation_url(&fake, "Participants");
    let (status, _, body) = post_form(&url, &[("Identity", "bot")], &[]).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        response_problems(Route::ConversationParticipants, &body).is_empty(),
        "{:?}",
        response_problems(Route::ConversationParticipants, &body)
    );
    let sid = body["sid"].as_str().unwrap().to_owned();
    assert!(sid.starts_with("MB"));
    assert_eq!(body["identity"], "bot");
    assert_eq!(body["conversation_sid"], CONVERSATION);

    // The bot's messages now carry its participant SID.
    let (_, _, message) = post_form(
        &conversation_url(&fake, "Messages"),
        &[("Author", "bot"), ("Body", "hi")],
        &[],
    )
    .await;
    assert_eq!(message["participant_sid"], sid.as_str());

    // Adding it again: 409 / 50433, as Twilio does.
    let (status, _, body) = post_form(&url, &[("Identity", "bot")], &[]).await;
    assert_eq!(status, 409);
    assert_twilio_error_shape(&body, 409, 50433);
    assert_eq!(fake.created(Route::ConversationParticipants).len(), 1);

    // An SMS participant and a seeded one.
    let (status, _, body) = post_form(
        &url,
        &[
            ("MessagingBinding.Address", "+15558675310"),
            ("MessagingBinding.ProxyAddress", "+15017122661"),
        ],
        &[("X-Twilio-Webhook-Enabled", "false")],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["messaging_binding"]["address"], "+15558675310");
    assert!(response_problems(Route::ConversationParticipants, &body).is_empty());
    fake.seed_participant("CHOTHER", "bot");
    let other = format!("{}/v1/Conversations/CHOTHER/Participants", fake.base_url);
    let (status, _, _) = post_form(&other, &[("Identity", "bot")], &[]).await;
    assert_eq!(status, 409);
    fake.assert_no_violations();
}

#[tokio::test]
async fn fake_twilio_error_reply_has_twilios_shape() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    fake.enqueue(
        Route::Messages,
        Reply::TwilioError {
            status: 400,
            code: 21610,
            message: "Attempt to send to unsubscribed recipient".to_owned(),
        },
    );
    fake.enqueue(Route::Messages, Reply::status(503));
    let params = [
        ("To", "+15558675310"),
        ("From", "+15017122661"),
        ("Body", "hi"),
    ];
    let (status, _, body) = post_form(&messages_url(&fake), &params, &[]).await;
    assert_eq!(status, 400);
    assert_twilio_error_shape(&body, 400, 21610);
    assert_eq!(body["message"], "Attempt to send to unsubscribed recipient");
    let (status, headers, body) = post_form(&messages_url(&fake), &params, &[]).await;
    assert_eq!(status, 503);
    assert!(headers.get("retry-after").is_none());
    assert_twilio_error_shape(&body, 503, 20503);
    let (status, _, _) = post_form(&messages_url(&fake), &params, &[]).await;
    assert_eq!(status, 201);
    assert_eq!(fake.created(Route::Messages).len(), 1);
    fake.assert_no_violations();
}

#[tokio::test]
async fn fake_twilio_delayed_reply_and_wait_for_requests() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    fake.enqueue(
        Route::ConversationMessages,
        Reply::delayed(
            Duration::from_millis(300),
            Reply::TwilioError {
                status: 500,
                code: 20500,
                message: "Internal Server Error".to_owned(),
            },
        ),
    );
    let url = conversation_url(&fake, "Messages");
    let started = Instant::now();
    let task = tokio::spawn(async move { post_form(&url, &[("Body", "x")], &[]).await });
    let seen = fake
        .wait_for_requests(Route::ConversationMessages, 1, Duration::from_secs(5))
        .await;
    assert_eq!(seen[0].param("Body"), Some("x"));
    let (status, _, body) = task.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, 500);
    assert_twilio_error_shape(&body, 500, 20500);
    assert!(fake.created(Route::ConversationMessages).is_empty());
}

#[test]
fn fake_twilio_response_problems_catches_misshapen_bodies() {
    let body = json!({"sid": "XX0123456789abcdef0123456789abcdef", "status": "bogus"});
    let problems = response_problems(Route::Messages, &body);
    assert!(problems.iter().any(|p| p.contains("`sid`")), "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("`status`")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("`to` is missing")),
        "{problems:?}"
    );
    let extra = json!({"identity": "bot", "bogus": 1});
    let problems = response_problems(Route::ConversationParticipants, &extra);
    assert!(
        problems.iter().any(|p| p.contains("`bogus` is not in")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn fake_twilio_realistic_mode_created_but_failed_and_list_messages() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    let url = messages_url(&fake);
    let params = [
        ("To", "+15558675310"),
        ("From", "+15017122661"),
        ("Body", "hi"),
    ];
    let token = [("I-Twilio-Idempotency-Token", "same")];
    fake.enqueue(Route::Messages, Reply::CreatedButFailed { status: 500 });
    let (status, _, body) = post_form(&url, &params, &token).await;
    assert_eq!(status, 500);
    assert_twilio_error_shape(&body, 500, 20500);
    let (status, _, second) = post_form(&url, &params, &token).await;
    assert_eq!(status, 201);
    assert_eq!(
        fake.created(Route::Messages).len(),
        2,
        "no idempotency emulation: the same token creates again"
    );
    post_form(
        &url,
        &[
            ("To", "+15558675399"),
            ("From", "+15017122661"),
            ("Body", "other"),
        ],
        &[],
    )
    .await;

    let list = |query: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let response = reqwest::Client::new()
                .get(&url)
                .basic_auth(ACCOUNT, Some(TOKEN))
                .query(&query)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let today = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // Queued messages have no date_sent yet: a DateSent filter does not list them.
    let (status, page) = list(vec![("To", "+15558675310".into()), ("DateSent>", today)]).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"], json!([]), "{page}");
    let (status, page) = list(vec![
        ("To", "+15558675310".into()),
        ("From", "+15017122661".into()),
        ("PageSize", "20".into()),
    ])
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(Route::ListMessages.success_status(), 200);
    assert!(
        response_problems(Route::ListMessages, &page).is_empty(),
        "{:?}",
        response_problems(Route::ListMessages, &page)
    );
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{page}");
    assert_eq!(messages[0]["sid"], second["sid"], "newest first");
    assert!(messages.iter().all(|m| m["to"] == "+15558675310"));
    assert!(
        messages.iter().all(|m| m["date_sent"].is_null()),
        "still queued"
    );

    let tomorrow = (chrono::Utc::now() + chrono::TimeDelta::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, page) = list(vec![("DateSent>", tomorrow)]).await;
    assert_eq!(page["messages"], json!([]));
    let (_, page) = list(vec![]).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);

    // A query parameter the operation does not define is a violation.
    let (status, _) = list(vec![("Sender", "x".into())]).await;
    assert_eq!(status, 400);
    assert!(fake
        .violations()
        .iter()
        .any(|v| v.contains("`Sender` is not defined for ListMessage")));
    assert_eq!(fake.requests_to(Route::ListMessages).len(), 5);
}

#[tokio::test]
async fn fake_twilio_lists_seeded_media_spec_shaped() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    let message = "MM0123456789abcdef0123456789abcdef";
    let seeded = fake.seed_message_media(message, &["image/jpeg", "video/mp4"]);
    let media_url = |message: &str| {
        format!(
            "{}/2010-04-01/Accounts/{ACCOUNT}/Messages/{message}/Media.json",
            fake.base_url
        )
    };
    let list = |url: String| async move {
        let response = reqwest::Client::new()
            .get(url)
            .basic_auth(ACCOUNT, Some(TOKEN))
            .query(&[("PageSize", "20")])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };

    let (status, page) = list(media_url(message)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(Route::ListMedia.success_status(), 200);
    let problems = response_problems(Route::ListMedia, &page);
    assert!(problems.is_empty(), "{problems:?}");
    let listed = page["media_list"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["sid"], seeded[0]);
    assert_eq!(listed[1]["content_type"], "video/mp4");
    assert_eq!(listed[0]["parent_sid"], message);
    assert_eq!(
        listed[0]["uri"],
        format!(
            "/2010-04-01/Accounts/{ACCOUNT}/Messages/{message}/Media/{}.json",
            seeded[0]
        )
    );

    // A message without seeded media is unknown to the fake, as it would be to Twilio.
    let (status, body) = list(media_url("SM0123456789abcdef0123456789abcdef")).await;
    assert_eq!(status, 404);
    assert_twilio_error_shape(&body, 404, 20404);
    fake.assert_no_violations();

    // A conversation message SID is not a Messaging SID: the path breaks the document.
    let (status, _) = list(media_url("IM0123456789abcdef0123456789abcdef")).await;
    assert_eq!(status, 400);
    assert!(fake
        .violations()
        .iter()
        .any(|v| v.contains("path parameter `MessageSid`")));

    fake.enqueue(Route::ListMedia, Reply::status(503));
    let (status, body) = list(media_url(message)).await;
    assert_eq!(status, 503);
    assert_twilio_error_shape(&body, 503, 20503);
    assert_eq!(fake.requests_to(Route::ListMedia).len(), 4);
}

/// The vendored OpenAPI documents are the ones `vendor/twilio-oai/README.md` names: every file
/// listed with its SHA-256 there is present with that sum, and nothing else is beside them.
#[test]
fn the_vendored_documents_match_their_recorded_checksums() {
    use sha2::{Digest, Sha256};
    let dir = vendored_dir();
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("vendor README");
    let recorded: Vec<(&str, &str)> = readme
        .lines()
        .filter_map(|line| {
            let (sum, file) = line.trim().split_once("  ")?;
            (sum.len() == 64 && sum.chars().all(|c| c.is_ascii_hexdigit())).then_some((sum, file))
        })
        .collect();
    let mut files: Vec<String> = recorded.iter().map(|(_, f)| f.to_string()).collect();
    files.sort();
    assert_eq!(
        files,
        [
            "LICENSE",
            "twilio_api_v2010.json",
            "twilio_conversations_v1.json"
        ],
        "the README records a sum for each vendored file"
    );
    for (sum, file) in recorded {
        let bytes = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            sum,
            "{file} differs from its recorded sum"
        );
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(
        present,
        [
            "LICENSE",
            "README.md",
            "twilio_api_v2010.json",
            "twilio_conversations_v1.json"
        ]
    );
}
