//! The Twilio REST client against the fake Twilio (no broker needed): Basic auth with the API
//! key when configured, add-participant idempotence (409 / 50433 is success), error mapping.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use ingress_egress::{
    configuration::Settings,
    connectors::twilio::config::TwilioSettings,
    connectors::twilio::rest::{
        Created, MessageSender, NewConversationMessage, NewMessage, ParticipantAdded, RestError,
        TwilioRest,
    },
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    egress_support::fake_twilio,
    fake_twilio::{FakeTwilio, Reply, Route},
    helpers::fixture_tokens,
};

const CONVERSATION: &str = "CH0123456789abcdef0123456789abcdef";
const API_KEY: &str = "SK0123456789abcdef0123456789abcdef";

fn rest(fake: &FakeTwilio, extra: &[(&str, &str)]) -> TwilioRest {
    rest_at(&fake.base_url, extra)
}

/// The client with both Twilio base URLs pointing at `base_url`.
fn rest_at(base_url: &str, extra: &[(&str, &str)]) -> TwilioRest {
    let tokens = fixture_tokens();
    let mut vars = vec![
        ("TWILIO_ACCOUNT_SID".to_owned(), tokens.account_sid.clone()),
        (
            "TWILIO_AUTH_TOKEN".to_owned(),
            tokens.primary_auth_token.clone(),
        ),
        ("TWILIO_API_BASE_URL".to_owned(), base_url.to_owned()),
        (
            "TWILIO_CONVERSATIONS_BASE_URL".to_owned(),
            base_url.to_owned(),
        ),
    ];
    vars.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let settings = Settings::from_vars(vars).unwrap();
    TwilioRest::new(
        &TwilioSettings::from_environment(&settings.environment, settings.app_env).unwrap(),
    )
}

#[tokio::test]
async fn add_participant_treats_already_a_participant_as_success() {
    let fake = fake_twilio().await;
    let client = rest(&fake, &[]);
    let added = client
        .add_participant(CONVERSATION, "bot-identity")
        .await
        .unwrap();
    assert!(
        matches!(&added, ParticipantAdded::Added { sid } if sid.starts_with("MB")),
        "{added:?}"
    );
    fake.seed_participant(CONVERSATION, "other-bot");
    assert_eq!(
        client
            .add_participant(CONVERSATION, "other-bot")
            .await
            .unwrap(),
        ParticipantAdded::AlreadyParticipant
    );
    let requests = fake.requests_to(Route::ConversationParticipants);
    assert_eq!(requests[0].param("Identity"), Some("bot-identity"));
    assert!(requests[0].idempotency_token.is_some());
    fake.assert_no_violations();
}

#[tokio::test]
async fn api_key_credentials_are_preferred_when_configured() {
    let fake = FakeTwilio::start(API_KEY, "api-secret").await;
    let client = rest(
        &fake,
        &[
            ("TWILIO_API_KEY", API_KEY),
            ("TWILIO_API_SECRET", "api-secret"),
        ],
    );
    let created = client
        .create_message(&NewMessage {
            to: "+14155550100",
            sender: &MessageSender::MessagingService("MG00000000000000000000000000000001".into()),
            body: Some("hi"),
            media_urls: &[],
            status_callback: None,
            idempotency_token: "token-1",
        })
        .await
        .unwrap();
    assert!(created.sid.starts_with("SM"), "{created:?}");
    let request = &fake.requests_to(Route::Messages)[0];
    assert_eq!(
        request.path_params["AccountSid"],
        fixture_tokens().account_sid
    );
    assert_eq!(
        request.param("MessagingServiceSid"),
        Some("MG00000000000000000000000000000001")
    );
    assert_eq!(request.idempotency_token.as_deref(), Some("token-1"));
    fake.assert_no_violations();

    // The auth token is not accepted by this fake: proves which credentials were used.
    let wrong = rest(&fake, &[]);
    let error = wrong
        .create_conversation_message(&NewConversationMessage {
            attributes: None,
            conversation_sid: CONVERSATION,
            author: Some("bot"),
            body: Some("hi"),
            media_sid: None,
            idempotency_token: "token-2",
        })
        .await
        .unwrap_err();
    assert_eq!(error.http_status(), Some(401));
    assert_eq!(error.error_code(), Some(20003));
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn twilio_errors_keep_code_status_and_retry_after() {
    let fake = fake_twilio().await;
    let client = rest(&fake, &[]);
    fake.enqueue(Route::Messages, Reply::too_many_requests(Some(3)));
    fake.enqueue(
        Route::Messages,
        Reply::TwilioError {
            status: 400,
            code: 21211,
            message: "The 'To' number is not a valid phone number.".into(),
        },
    );
    let send = || create_sms(&client, "token-3");
    let limited = send().await.unwrap_err();
    assert!(limited.is_retryable());
    assert_eq!(
        limited.retry_after(),
        Some(std::time::Duration::from_secs(3))
    );
    let invalid = send().await.unwrap_err();
    assert!(matches!(
        invalid,
        RestError::Http {
            status: 400,
            code: Some(21211),
            ..
        }
    ));
    assert!(!invalid.is_retryable());
    assert!(send().await.is_ok());
    fake.assert_no_violations();
}

/// A server at a wrong base URL (a proxy, a login page) that answers every request with
/// `answer`; its base URL and how many requests it got.
async fn answering(answer: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0; 16 * 1024];
                // One request per connection; its head and small form fit in one read.
                if socket.read(&mut buffer).await.unwrap_or(0) > 0 {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = socket.write_all(answer.as_bytes()).await;
                }
            });
        }
    });
    (base_url, requests)
}

/// Creates a one-part SMS with idempotency token `token`.
async fn create_sms(client: &TwilioRest, token: &str) -> Result<Created, RestError> {
    client
        .create_message(&NewMessage {
            to: "+14155550100",
            sender: &MessageSender::From("+15005550006".into()),
            body: Some("hi"),
            media_urls: &[],
            status_callback: None,
            idempotency_token: token,
        })
        .await
}

/// Creates a one-part SMS through the client at `base_url`, expecting the create to fail.
async fn failed_create(base_url: &str) -> RestError {
    create_sms(&rest_at(base_url, &[]), "token-1")
        .await
        .expect_err("the create fails")
}

/// A base URL that redirects (http:// where a proxy wants https://, a login page): a 307 or 308
/// followed would create the message a second time, a 301 or 302 would turn the create into a
/// GET whose list answer looks like a success. The answer is reported as it came, a permanent
/// failure that names where it pointed (without the query), and nothing is sent twice.
#[tokio::test]
async fn a_redirect_is_reported_not_followed() {
    let (base_url, requests) = answering(
        "HTTP/1.1 307 Temporary Redirect\r\n\
         Location: /moved/Messages.json?To=%2B14155550100\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let error = failed_create(&base_url).await;
    assert_eq!(error.http_status(), Some(307), "{error}");
    assert!(!error.is_retryable() && !error.is_ambiguous(), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("redirected to {base_url}/moved/Messages.json")),
        "{message}"
    );
    assert!(!message.contains("4155550100"), "{message}");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

/// A 2xx answer that is not a Message resource (a proxy's page) does not say whether the
/// message was created: it must not count as sent (nor as refused), but as an answer that
/// could not be read, which the engine resolves before sending again.
#[tokio::test]
async fn a_success_without_a_sid_is_not_taken_for_a_send() {
    let (base_url, requests) = answering(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 22\r\n\
         Connection: close\r\n\r\n<html>Sign in</html>\r\n",
    )
    .await;
    let error = failed_create(&base_url).await;
    assert!(error.is_ambiguous() && error.is_retryable(), "{error}");
    assert!(
        error
            .to_string()
            .contains("the 2xx answer carried no resource SID"),
        "{error}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}
