//! The Twilio REST client against the fake Twilio (no broker needed): Basic auth with the API
//! key when configured, add-participant idempotence (409 / 50433 is success), error mapping.

use ingress_egress::{
    configuration::Settings,
    connectors::twilio::config::TwilioSettings,
    connectors::twilio::rest::{
        MessageSender, NewConversationMessage, NewMessage, ParticipantAdded, RestError, TwilioRest,
    },
};

use crate::{
    egress_support::fake_twilio,
    fake_twilio::{FakeTwilio, Reply, Route},
    helpers::fixture_tokens,
};

const CONVERSATION: &str = "CH0123456789abcdef0123456789abcdef";
const API_KEY: &str = "SK0123456789abcdef0123456789abcdef";

fn rest(fake: &FakeTwilio, extra: &[(&str, &str)]) -> TwilioRest {
    let tokens = fixture_tokens();
    let mut vars = vec![
        ("TWILIO_ACCOUNT_SID".to_owned(), tokens.account_sid.clone()),
        (
            "TWILIO_AUTH_TOKEN".to_owned(),
            tokens.primary_auth_token.clone(),
        ),
        ("TWILIO_API_BASE_URL".to_owned(), fake.base_url.clone()),
        (
            "TWILIO_CONVERSATIONS_BASE_URL".to_owned(),
            fake.base_url.clone(),
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
    let send = || async {
        client
            .create_message(&NewMessage {
                to: "+14155550100",
                sender: &MessageSender::From("+15005550006".into()),
                body: Some("hi"),
                media_urls: &[],
                status_callback: None,
                idempotency_token: "token-3",
            })
            .await
    };
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
