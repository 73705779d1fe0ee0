//! No secret in the logs of the socket transport: the real binary, every crate logging at
//! `trace`, through a whole session against the emulator (connect, a message, a token renewal,
//! an expiry and its reconnect, a reply posted over the socket), and its output read back.

use serde_json::json;

use crate::{
    emulator::{
        Emulator, ACCOUNT_SID, API_KEY_SECRET, API_KEY_SID, BOT, CHAT_SERVICE_SID, SMS_USER,
    },
    helpers::{fixture_tokens, BusTap},
    process::{PrivateBus, Service, Workdir},
    require_broker,
};

/// Every JSON Web Token in `text`: three dot-separated base64url parts, the first two JSON
/// objects (`eyJ` is `{"` encoded).
fn jwts(text: &str) -> Vec<String> {
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    text.match_indices("eyJ")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| is_part(*c))
                .collect::<String>()
        })
        .filter(|candidate| {
            let parts: Vec<&str> = candidate.split('.').collect();
            parts.len() == 3 && parts[1].starts_with("eyJ") && !parts[2].is_empty()
        })
        .collect()
}

#[test]
fn a_token_in_text_is_recognised() {
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJBQyJ9.c2lnbmF0dXJl";
    assert_eq!(jwts(&format!("{{\"token\":\"{token}\"}}")), vec![token]);
    assert!(jwts("{\"body\":\"eyJ is not a token\"}").is_empty());
}

#[tokio::test]
async fn a_whole_socket_session_logged_at_trace_carries_no_secret() {
    let url = require_broker!();
    let emulator = Emulator::start(&[]).await;
    let conversation = emulator.joined_conversation().await;
    let bus = PrivateBus::new(&url);
    let exchange = bus.exchange.clone();
    let mut ingress_tap = BusTap::bind(&url, &exchange, "internal.ingress.v1").await;
    let mut status_tap = BusTap::bind(&url, &exchange, "internal.egress.status.v1").await;
    let tokens = fixture_tokens();
    let workdir = Workdir::new();
    let twilsock = emulator.url();
    let mut vars = vec![
        ("APP_ENV", "development"),
        ("RUST_LOG", "trace"),
        workdir.outbox(),
        ("PUBLIC_BASE_URL", tokens.public_base_url.as_str()),
        ("TWILIO_ACCOUNT_SID", ACCOUNT_SID),
        ("TWILIO_AUTH_TOKEN", tokens.primary_auth_token.as_str()),
        ("TWILIO_TRANSPORT", "websocket"),
        ("TWILIO_EGRESS_TRANSPORT", "websocket"),
        ("TWILIO_TWILSOCK_URL", twilsock.as_str()),
        ("TWILIO_API_KEY", API_KEY_SID),
        ("TWILIO_API_SECRET", API_KEY_SECRET),
        ("TWILIO_CHAT_SERVICE_SID", CHAT_SERVICE_SID),
        ("TWILIO_IDENTITY", BOT),
        ("TWILIO_MAX_SEND_RATE", "100"),
    ];
    vars.extend(bus.vars());
    let service = Service::start(workdir.path(), &vars);
    service.wait_ready().await;

    // A message in, a renewal, an expiry and its reconnect, a reply out.
    let (sid, _) = emulator.message(&conversation, SMS_USER, "hello").await;
    let (delivery, _) = ingress_tap.next_json().await;
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        format!("twilio:{sid}")
    );
    emulator.post("/tokens/about-to-expire", json!({})).await;
    emulator
        .until("the token was updated", |state| {
            state["tokenUpdates"].as_u64().unwrap_or(0) >= 1
        })
        .await;
    emulator.post("/tokens/expire", json!({})).await;
    let state = emulator
        .until("a new init", |state| {
            state["inits"].as_u64().unwrap_or(0) >= 2
        })
        .await;
    service.wait_ready().await;
    let reply = crate::service::reply_in(&conversation, "logged without secrets");
    crate::service::publish(&url, &exchange, "internal.egress.v1", "reply-logs", &reply).await;
    let (_, status) = status_tap.next_json().await;
    assert_eq!(status["status"], "sent", "{status}");

    let text = service.lines().join("\n");
    // The output is the session's: trace lines from the socket client and from the crates
    // under it, so a secret written anywhere on the way would be here.
    assert!(text.contains("twilsock"), "no socket lines were logged");
    assert!(text.lines().count() > 100, "too little was logged:\n{text}");
    let continuation = state["sessions"][0]["continuationToken"]
        .as_str()
        .expect("the emulator's session")
        .to_owned();
    let password = url::Url::parse(&url)
        .unwrap()
        .password()
        .map(|p| format!(":{p}@"));
    let secrets = [
        ("TWILIO_API_SECRET", Some(API_KEY_SECRET.to_owned())),
        ("TWILIO_AUTH_TOKEN", Some(tokens.primary_auth_token.clone())),
        ("the twilsock continuation token", Some(continuation)),
        ("the AMQP password", password),
    ];
    for (name, secret) in secrets {
        let Some(secret) = secret else { continue };
        if let Some(line) = text.lines().find(|line| line.contains(&secret)) {
            panic!("{name} was logged: {line}");
        }
    }
    let leaked = jwts(&text);
    assert!(leaked.is_empty(), "an access token was logged: {leaked:?}");
}
