//! No secret in the logs of the socket transport: the real binary, every crate logging at
//! `trace`, through a whole session against the emulator (connect, a message, a token renewal,
//! an expiry and its reconnect, a reply posted over the socket), and its output read back.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{json, Value};

use crate::{
    emulator::{
        Emulator, ACCOUNT_SID, API_KEY_SECRET, API_KEY_SID, BOT, CHAT_SERVICE_SID, SMS_USER, WAIT,
    },
    helpers::{delete_broker_objects, fixture_tokens, BusTap},
    require_broker,
};

/// Every line the process wrote, stdout and stderr alike.
type Lines = Arc<Mutex<Vec<String>>>;

fn collect(stream: impl Read + Send + 'static, lines: Lines) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    })
}

/// The port from the service's "listening" line, once it has been written.
async fn listening_port(lines: &Lines, child: &mut Child) -> u16 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let port = lines.lock().unwrap().iter().find_map(|line| {
            let json: Value = serde_json::from_str(line).ok()?;
            (json["message"] == "ingress-egress listening").then(|| json["port"].as_u64())?
        });
        if let Some(port) = port {
            return port as u16;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the service exited ({status}): {}",
                lines.lock().unwrap().join("\n")
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service never said it listens"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn ready(http: &reqwest::Client, base: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = http.get(format!("{base}/readyz")).send().await;
        if response.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("test-ws-logs-{id}");
    let mut ingress_tap = BusTap::bind(&url, &exchange, "internal.ingress.v1").await;
    let mut status_tap = BusTap::bind(&url, &exchange, "internal.egress.status.v1").await;
    let tokens = fixture_tokens();
    let outbox = tempfile::tempdir().unwrap();

    // Away from the repository, whose `.env` the binary would read.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingress-egress"))
        .current_dir(outbox.path())
        .env_clear()
        .env("PORT", "0")
        .env("APP_ENV", "development")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "trace")
        .env("AMQP_URL", &url)
        .env("AMQP_EXCHANGE", &exchange)
        .env("AMQP_EGRESS_QUEUE", format!("{exchange}.egress"))
        .env("AMQP_EGRESS_QUEUE_TYPE", "classic")
        .env("INSTANCE_ID", format!("test-{id}"))
        .env("OUTBOX_DIR", outbox.path())
        .env("PUBLIC_BASE_URL", &tokens.public_base_url)
        .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
        .env("TWILIO_AUTH_TOKEN", &tokens.primary_auth_token)
        .env("TWILIO_TRANSPORT", "websocket")
        .env("TWILIO_EGRESS_TRANSPORT", "websocket")
        .env("TWILIO_TWILSOCK_URL", emulator.url())
        .env("TWILIO_API_KEY", API_KEY_SID)
        .env("TWILIO_API_SECRET", API_KEY_SECRET)
        .env("TWILIO_CHAT_SERVICE_SID", CHAT_SERVICE_SID)
        .env("TWILIO_IDENTITY", BOT)
        .env("TWILIO_MAX_SEND_RATE", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the service binary starts");
    let lines: Lines = Arc::default();
    let readers = [
        collect(child.stdout.take().unwrap(), lines.clone()),
        collect(child.stderr.take().unwrap(), lines.clone()),
    ];
    let port = listening_port(&lines, &mut child).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    ready(&http, &base).await;

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
    ready(&http, &base).await;
    let reply = json!({
        "v": "2",
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "type": "chat.message.v1",
        "ingress": {"ingressAt": "2026-01-01T00:00:00Z", "source": "ingress.twilio", "connector": "twilio", "channel": conversation},
        "identity": {"external": {"id": SMS_USER, "platform": "twilio"}},
        "egress": {"destination": "internal.egress.v1", "connector": "twilio", "type": "chat", "channel": conversation},
        "routing": {"stage": "responded", "slip": [], "history": []},
        "message": {"id": "bot-reply-1", "role": "assistant", "text": "logged without secrets"}
    });
    crate::service::publish(&url, &exchange, "internal.egress.v1", "reply-logs", &reply).await;
    let (_, status) = status_tap.next_json().await;
    assert_eq!(status["status"], "sent", "{status}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the service did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for reader in readers {
        reader.join().unwrap();
    }
    delete_broker_objects(&url, &exchange, &format!("{exchange}.egress"));

    let text = lines.lock().unwrap().join("\n");
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
