//! Session behaviour the emulator cannot provoke (close 401/308, init failures, reply routing,
//! timeouts, lost connections), against a scripted twilsock server on loopback.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use ingress_egress::connectors::twilio::websocket::{
    frame::{Frame, Header, HttpRequest, HttpStatus, Method, Status},
    session::{self, SessionConfig, SessionError, SessionEvent, TransportState},
    token::TokenSpec,
};

const WAIT: Duration = Duration::from_secs(10);

type Server = WebSocketStream<TcpStream>;

fn tokens() -> Arc<TokenSpec> {
    Arc::new(TokenSpec {
        account_sid: "AC1".into(),
        api_key_sid: "SK1".into(),
        api_key_secret: SecretString::from("secret"),
        chat_service_sid: "IS1".into(),
        identity: "bot".into(),
        ttl: Duration::from_secs(3600),
        region: None,
    })
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v3/wsconnect", listener.local_addr().unwrap());
    (listener, url)
}

fn config(url: &str) -> SessionConfig {
    let mut config = SessionConfig::new(url);
    config.reconnect_base = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(100);
    config
}

async fn accept(listener: &TcpListener) -> Server {
    let (stream, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    tokio_tungstenite::accept_async(stream).await.unwrap()
}

async fn read(server: &mut Server) -> Frame {
    loop {
        let message = timeout(WAIT, server.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Binary(bytes) = message {
            return Frame::decode(&bytes).unwrap();
        }
    }
}

/// Reads frames until one with `method`, skipping acks.
async fn read_method(server: &mut Server, method: Method) -> Frame {
    loop {
        let frame = read(server).await;
        if frame.header.method == method {
            return frame;
        }
    }
}

async fn send(server: &mut Server, frame: Frame) {
    server.send(Message::binary(frame.encode())).await.unwrap();
}

fn reply(id: &str, code: u16) -> Header {
    let mut header = Header::new(Method::Reply, id);
    header.status = Some(Status {
        code,
        status: if code == 200 {
            "OK".into()
        } else {
            "Error".into()
        },
        ..Default::default()
    });
    header
}

/// Answers init with 200 and a continuation token; returns the init frame.
async fn handshake(server: &mut Server, continuation: &str) -> Frame {
    let init = read_method(server, Method::Init).await;
    let mut header = reply(&init.header.id, 200);
    header
        .extra
        .insert("continuation_token".into(), json!(continuation));
    send(server, Frame::new(header)).await;
    init
}

fn request() -> HttpRequest {
    HttpRequest {
        host: "aim.us1.twilio.com".into(),
        path: "/Client/v2/Configuration".into(),
        method: "GET".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn init_carries_sdk_registrations_and_notifications_are_acked() {
    let (listener, url) = listen().await;
    let cancel = CancellationToken::new();
    let (handle, mut events, _task) = session::spawn(config(&url), tokens(), cancel.clone());
    let mut server = accept(&listener).await;
    let init = handshake(&mut server, "CT1").await;
    assert!(init
        .header
        .token
        .as_deref()
        .is_some_and(|t| t.split('.').count() == 3));
    assert_eq!(init.header.extra["continuation_token"], Value::Null);
    assert_eq!(
        init.header.extra["registrations"][0]["message_types"],
        json!([
            "twilio.ipmsg.typing_indicator",
            "twilio.sync.event",
            "com.twilio.rtd.cds.document",
            "com.twilio.rtd.cds.list",
            "com.twilio.rtd.cds.map"
        ])
    );
    assert_eq!(
        init.header.extra["registrations"][0]["product"],
        "ip_messaging"
    );
    assert!(matches!(
        timeout(WAIT, events.recv()).await.unwrap(),
        Some(SessionEvent::Connected {
            generation: 1,
            resumed: false
        })
    ));
    assert_eq!(*handle.state().borrow(), TransportState::Connected);

    let mut header = Header::new(Method::Notification, "TMn1");
    header.message_type = Some("com.twilio.rtd.cds.list".into());
    send(
        &mut server,
        Frame::with_json(header, &json!({"event_type": "x", "event": {}})),
    )
    .await;
    let ack = read(&mut server).await;
    assert_eq!(
        (ack.header.method, ack.header.id.as_str()),
        (Method::Reply, "TMn1")
    );
    assert_eq!(ack.header.status.unwrap().code, 200);
    match timeout(WAIT, events.recv()).await.unwrap() {
        Some(SessionEvent::Notification(n)) => {
            assert_eq!(n.message_type, "com.twilio.rtd.cds.list")
        }
        other => panic!("{other:?}"),
    }

    // A text frame and a malformed binary frame are counted and skipped.
    server
        .send(Message::text("TWILSOCK V3.0 2\r\n{}\r\n"))
        .await
        .unwrap();
    server
        .send(Message::binary(b"garbage".to_vec()))
        .await
        .unwrap();
    let mut header = Header::new(Method::Notification, "TMn2");
    header.message_type = Some("twilio.sync.event".into());
    send(&mut server, Frame::with_json(header, &json!({}))).await;
    assert_eq!(read(&mut server).await.header.id, "TMn2");
    assert_eq!(handle.stats().malformed_frames.load(Ordering::Relaxed), 2);

    cancel.cancel();
    let close = read_method(&mut server, Method::Close).await;
    assert!(close.header.id.starts_with("TM"));
}

#[tokio::test]
async fn replies_are_routed_by_id_and_timeouts_and_drops_are_errors() {
    let (listener, url) = listen().await;
    let cancel = CancellationToken::new();
    let (handle, _events, _task) = session::spawn(config(&url), tokens(), cancel.clone());
    let mut server = accept(&listener).await;
    handshake(&mut server, "CT1").await;

    let first = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.request(request(), None, Vec::new(), WAIT).await })
    };
    let second = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.request(request(), None, Vec::new(), WAIT).await })
    };
    let a = read_method(&mut server, Method::Message).await;
    let b = read_method(&mut server, Method::Message).await;
    assert_eq!(a.header.active_grant.as_deref(), Some("ip_messaging"));
    for (frame, code) in [(&b, 404u16), (&a, 200u16)] {
        let mut header = reply(&frame.header.id, 200);
        header.http_status = Some(HttpStatus {
            code,
            status: "x".into(),
        });
        send(
            &mut server,
            Frame::with_json(header, &json!({"id": frame.header.id})),
        )
        .await;
    }
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();
    let first_body: Value = serde_json::from_slice(&first.body).unwrap();
    let second_body: Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(
        (first.http_status.code, first_body["id"].as_str()),
        (200, Some(a.header.id.as_str()))
    );
    assert_eq!(
        (second.http_status.code, second_body["id"].as_str()),
        (404, Some(b.header.id.as_str()))
    );

    // No reply: the caller's timeout.
    let result = handle
        .request(request(), None, Vec::new(), Duration::from_millis(200))
        .await;
    assert_eq!(
        result.unwrap_err(),
        SessionError::Timeout(Duration::from_millis(200))
    );
    read_method(&mut server, Method::Message).await;

    // Written, then the socket dies: the outcome is unknown.
    let pending = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.request(request(), None, Vec::new(), WAIT).await })
    };
    read_method(&mut server, Method::Message).await;
    drop(server);
    assert_eq!(
        pending.await.unwrap().unwrap_err(),
        SessionError::ConnectionLost
    );

    // Requests made while down go out after the reconnect, which resumes the session.
    let queued = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.request(request(), None, Vec::new(), WAIT).await })
    };
    let mut server = accept(&listener).await;
    let init = handshake(&mut server, "CT1").await;
    assert_eq!(init.header.extra["continuation_token"], "CT1");
    let message = read_method(&mut server, Method::Message).await;
    send(&mut server, Frame::new(reply(&message.header.id, 200))).await;
    assert_eq!(queued.await.unwrap().unwrap().http_status.code, 200);
    assert!(handle.stats().reconnects.load(Ordering::Relaxed) >= 1);
    cancel.cancel();
}

#[tokio::test]
/// A 308 (offload) reconnects with the continuation token; how its `reconnect_min_ms` becomes
/// the least wait is covered by the unit tests of `backoff_floor` and
/// `Backoff::next_delay_at_least`.
async fn offload_308_reconnects_with_the_continuation_token() {
    let (listener, url) = listen().await;
    let cancel = CancellationToken::new();
    let (handle, _events, _task) = session::spawn(config(&url), tokens(), cancel.clone());
    let mut server = accept(&listener).await;
    handshake(&mut server, "CT1").await;
    let mut header = Header::new(Method::Close, "TMc");
    header.status = Some(Status {
        code: 308,
        status: "Offload".into(),
        ..Default::default()
    });
    send(
        &mut server,
        Frame::with_json(header, &json!({"backoff_policy": {"reconnect_min_ms": 50}})),
    )
    .await;
    let mut server = accept(&listener).await;
    let init = handshake(&mut server, "CT1").await;
    assert_eq!(init.header.extra["continuation_token"], "CT1");
    let mut state = handle.state();
    timeout(WAIT, state.wait_for(|s| *s == TransportState::Connected))
        .await
        .unwrap()
        .unwrap();
    cancel.cancel();
}

#[tokio::test]
async fn close_401_is_terminal() {
    let (listener, url) = listen().await;
    let cancel = CancellationToken::new();
    let (handle, _events, _task) = session::spawn(config(&url), tokens(), cancel.clone());
    let mut server = accept(&listener).await;
    handshake(&mut server, "CT1").await;
    let mut header = Header::new(Method::Close, "TMc");
    header.status = Some(Status {
        code: 401,
        status: "Unauthorized".into(),
        ..Default::default()
    });
    send(&mut server, Frame::new(header)).await;
    let mut state = handle.state();
    timeout(
        WAIT,
        state.wait_for(|s| matches!(s, TransportState::Denied { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    let result = handle.request(request(), None, Vec::new(), WAIT).await;
    assert!(matches!(result, Err(SessionError::Denied(_))));
    // No reconnect attempt follows.
    assert!(timeout(Duration::from_millis(300), listener.accept())
        .await
        .is_err());
    cancel.cancel();
}

#[tokio::test]
async fn expired_token_at_init_is_reminted_once() {
    let (listener, url) = listen().await;
    let cancel = CancellationToken::new();
    let (handle, _events, _task) = session::spawn(config(&url), tokens(), cancel.clone());
    let mut server = accept(&listener).await;
    let init = read_method(&mut server, Method::Init).await;
    let first_token = init.header.token.clone().unwrap();
    let mut header = reply(&init.header.id, 401);
    if let Some(status) = header.status.as_mut() {
        status.error_code = Some(20104);
    }
    send(&mut server, Frame::new(header)).await;
    let mut server = accept(&listener).await;
    let init = handshake(&mut server, "CT1").await;
    assert_ne!(
        init.header.token.unwrap(),
        first_token,
        "a new token was minted"
    );
    let mut state = handle.state();
    timeout(WAIT, state.wait_for(|s| *s == TransportState::Connected))
        .await
        .unwrap()
        .unwrap();

    // A plain 401 at init is terminal.
    drop(server);
    let mut server = accept(&listener).await;
    let init = read_method(&mut server, Method::Init).await;
    send(&mut server, Frame::new(reply(&init.header.id, 401))).await;
    timeout(
        WAIT,
        state.wait_for(|s| matches!(s, TransportState::Denied { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    cancel.cancel();
}

#[tokio::test]
async fn about_to_expire_sends_an_update_on_the_same_socket() {
    let (listener, url) = listen().await;
    let cancel = CancellationToken::new();
    let (handle, _events, _task) = session::spawn(config(&url), tokens(), cancel.clone());
    let mut server = accept(&listener).await;
    let init = handshake(&mut server, "CT1").await;
    let mut header = Header::new(Method::ClientUpdate, "TMu");
    header.client_update_type = Some("token_about_to_expire".into());
    send(&mut server, Frame::new(header)).await;
    let update = read_method(&mut server, Method::Update).await;
    assert_ne!(update.header.token, init.header.token);
    send(&mut server, Frame::new(reply(&update.header.id, 200))).await;
    let deadline = Instant::now() + WAIT;
    while handle.stats().token_renewals.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.stats().reconnects.load(Ordering::Relaxed), 0);
    cancel.cancel();
}

#[tokio::test]
async fn upstream_retries_only_what_is_safe_to_repeat() {
    use ingress_egress::connectors::twilio::websocket::upstream::{
        Request, RetryPolicy, Upstream, UpstreamError,
    };
    let (listener, url) = listen().await;
    let cancel = CancellationToken::new();
    let (handle, _events, _task) = session::spawn(config(&url), tokens(), cancel.clone());
    let upstream = Upstream::new(
        handle,
        Duration::from_secs(2),
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
        cancel.clone(),
    );
    let mut server = accept(&listener).await;
    handshake(&mut server, "CT1").await;
    let answer = |id: &str, code: u16| {
        let mut header = reply(id, 200);
        header.http_status = Some(HttpStatus {
            code,
            status: "x".into(),
        });
        Frame::with_json(
            header,
            &json!({"status": code, "code": 20000 + u64::from(code)}),
        )
    };

    // A GET is retried through 503s.
    let get = {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let url =
                url::Url::parse("https://aim.us1.twilio.com/Client/v2/Configuration").unwrap();
            upstream.send(&Request::get(url)).await
        })
    };
    for code in [503, 502, 200] {
        let request = read_method(&mut server, Method::Message).await;
        send(&mut server, answer(&request.header.id, code)).await;
    }
    assert_eq!(get.await.unwrap().unwrap().status, 200);

    // A mutation is not repeated after a 503 (it may have been carried out) …
    let post = {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let url =
                url::Url::parse("https://aim.us1.twilio.com/Client/v2/Conversations/CH1/Messages")
                    .unwrap();
            upstream
                .send_ok(&Request::mutation("POST", url, Some(&json!({"body": "x"}))))
                .await
        })
    };
    let first = read_method(&mut server, Method::Message).await;
    send(&mut server, answer(&first.header.id, 503)).await;
    assert!(matches!(
        post.await.unwrap(),
        Err(UpstreamError::Http { status: 503, .. })
    ));

    // … but is after a 429, with the same mutation id.
    let post = {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let url =
                url::Url::parse("https://aim.us1.twilio.com/Client/v2/Conversations/CH1/Messages")
                    .unwrap();
            upstream
                .send_ok(&Request::mutation("POST", url, Some(&json!({"body": "x"}))))
                .await
        })
    };
    let first = read_method(&mut server, Method::Message).await;
    send(&mut server, answer(&first.header.id, 429)).await;
    let second = read_method(&mut server, Method::Message).await;
    let mutation_id = |frame: &Frame| {
        frame.header.http_request.as_ref().unwrap().headers["X-Twilio-Mutation-Id"].clone()
    };
    assert_eq!(mutation_id(&first), mutation_id(&second));
    send(&mut server, answer(&second.header.id, 201)).await;
    assert_eq!(post.await.unwrap().unwrap().status, 201);

    // A mutation whose reply is lost is ambiguous.
    let post = {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let url =
                url::Url::parse("https://aim.us1.twilio.com/Client/v2/Conversations/CH1/Messages")
                    .unwrap();
            upstream
                .send_ok(&Request::mutation("POST", url, Some(&json!({"body": "x"}))))
                .await
        })
    };
    read_method(&mut server, Method::Message).await;
    drop(server);
    assert!(matches!(
        post.await.unwrap(),
        Err(UpstreamError::Ambiguous { .. })
    ));
    cancel.cancel();
}
