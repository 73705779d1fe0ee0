//! What an attacker and a bad day found, each closed: forwarded headers are not trusted unless
//! configured, a slow body cannot hold a connection past its deadline, and one client cannot
//! take every request slot.

use std::time::Duration;

use ingress_egress::connectors::twilio::ingress::signature::compute_signature;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{fixture, fixture_tokens, spawn_app, TestApp};

fn sms_params() -> Vec<(String, String)> {
    let tokens = fixture_tokens();
    [
        ("MessageSid", format!("SM{}", uuid::Uuid::new_v4().simple())),
        ("AccountSid", tokens.account_sid),
        ("From", "+14155550100".to_owned()),
        ("To", "+15005550006".to_owned()),
        ("Body", "forged?".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A request signed (with the real token) for another host of the same account, dressed up
/// with forwarded headers naming that host.
async fn forged(app: &TestApp) -> u16 {
    let params = sms_params();
    let signature = compute_signature(
        &fixture_tokens().primary_auth_token,
        "https://other-service.example.com/webhooks/twilio/sms",
        &params,
    );
    app.client
        .post(format!("{}/webhooks/twilio/sms", app.address))
        .header("X-Twilio-Signature", signature)
        .header("X-Forwarded-Host", "other-service.example.com")
        .header("X-Forwarded-Proto", "https")
        .header("Forwarded", "host=other-service.example.com;proto=https")
        .form(&params)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn forwarded_headers_are_trusted_only_when_configured() {
    let app = spawn_app(None, &[("PUBLIC_BASE_URL", "")]).await;
    assert_eq!(
        forged(&app).await,
        403,
        "a client cannot pick the signed URL"
    );

    // Signed for the address the request really came to: accepted (local use).
    let params = sms_params();
    let url = format!("{}/webhooks/twilio/sms", app.address);
    let signature = compute_signature(&fixture_tokens().primary_auth_token, &url, &params);
    let status = app
        .client
        .post(&url)
        .header("X-Twilio-Signature", signature)
        .form(&params)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    let behind_proxy = spawn_app(
        None,
        &[("PUBLIC_BASE_URL", ""), ("TRUST_FORWARDED_HEADERS", "true")],
    )
    .await;
    assert_eq!(
        forged(&behind_proxy).await,
        200,
        "a trusted proxy names the host"
    );
}

/// Opens a webhook request that declares a 60 kB body and then sends it a byte at a time.
async fn slow_body(app: &TestApp) -> TcpStream {
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /webhooks/twilio/sms HTTP/1.1\r\nHost: {address}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: AAAA\r\n\
         Content-Length: 60000\r\n\r\nBody="
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

async fn response_of(stream: &mut TcpStream, within: Duration) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(within, async {
        loop {
            // Keep trickling so only the server's deadline can end this.
            let _ = stream.write_all(b"a").await;
            match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    answer.extend_from_slice(&buffer[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        // Head read; the JSON body follows in the same or the next packet.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if let Ok(Ok(n)) = tokio::time::timeout(
                            Duration::from_millis(200),
                            stream.read(&mut buffer),
                        )
                        .await
                        {
                            answer.extend_from_slice(&buffer[..n]);
                        }
                        break;
                    }
                }
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within {within:?}");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_and_frees_the_connection() {
    let app = spawn_app(None, &[("BODY_READ_TIMEOUT_MS", "1000")]).await;
    let mut slow = slow_body(&app).await;
    // Real traffic is not held up meanwhile.
    let response = app.post_fixture(&fixture("sms_basic")).await;
    assert_eq!(response.status(), 200);

    let answer = response_of(&mut slow, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let json: Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("{answer}"));
    assert_eq!(json["error"]["code"], "request_timeout");
}

#[tokio::test]
async fn one_client_cannot_take_every_request_slot() {
    let app = spawn_app(
        None,
        &[
            ("MAX_REQUESTS_PER_CLIENT", "2"),
            ("BODY_READ_TIMEOUT_MS", "3000"),
        ],
    )
    .await;
    let _first = slow_body(&app).await;
    let _second = slow_body(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests");
    let metrics = app.get("/metrics").await;
    // The metrics request itself may be refused while both are held; retry once they time out.
    let _ = metrics;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(r#"ingress_egress_rejected_requests_total{reason="client_limit"}"#),
        "{text}"
    );
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "slots freed by the deadline"
    );
}

/// A request the HTTP layer itself refuses (garbage request line, too many headers) is the
/// client's mistake: logged at INFO, never at ERROR.
#[tokio::test]
async fn requests_refused_by_the_http_layer_are_not_logged_as_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let outbox = tempfile::tempdir().unwrap();
    let mut service = tokio::process::Command::new(env!("CARGO_BIN_EXE_ingress-egress"))
        .env_clear()
        // Away from the repository, whose .env the binary would read.
        .current_dir(outbox.path())
        .env("PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .env("OUTBOX_DIR", outbox.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let address = format!("127.0.0.1:{port}");
    let mut connected = None;
    for _ in 0..100 {
        if let Ok(stream) = TcpStream::connect(&address).await {
            connected = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut garbage = connected.expect("the service listens");
    garbage.write_all(b"GARBAGE\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), garbage.read_to_end(&mut answer)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"));
    let mut headers = TcpStream::connect(&address).await.unwrap();
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    headers
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), headers.read_to_end(&mut answer)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"));

    tokio::time::sleep(Duration::from_millis(300)).await;
    service.start_kill().unwrap();
    let output = service.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(
        lines.iter().all(|line| line["severity"] != "ERROR"),
        "{log}"
    );
    let refused = lines
        .iter()
        .filter(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.contains("refused by the HTTP layer"))
        })
        .count();
    assert_eq!(refused, 2, "{log}");
}
