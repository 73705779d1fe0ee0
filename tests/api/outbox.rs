//! The durable outbox: with the broker away, accepted webhooks are answered 200, kept on disk,
//! and published exactly once (by message_id), in order, when the broker comes back — also
//! across a `kill -9` of the process.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use ingress_egress::{connectors::twilio::ingress::signature::compute_signature, envelope::topics};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    helpers::{fixture_tokens, spawn_app_not_ready, BusTap, TestApp},
    require_broker,
};

/// A TCP proxy in front of RabbitMQ that the test can start and cut.
struct BrokerProxy {
    port: u16,
    /// The broker's URL (its address is where the proxy forwards to; its vhost is kept).
    broker: url::Url,
    accept_loop: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl BrokerProxy {
    /// Reserves a port with nothing listening on it yet, for the broker at `broker_url`.
    fn unstarted(broker_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            port,
            broker: url::Url::parse(broker_url).expect("broker URL"),
            accept_loop: None,
            connections: Arc::default(),
        }
    }

    /// The broker's URL, through the proxy.
    fn url(&self) -> String {
        let mut url = self.broker.clone();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string()
    }

    async fn start(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("proxy port free");
        let connections = self.connections.clone();
        let broker = format!(
            "{}:{}",
            self.broker.host_str().unwrap_or("127.0.0.1"),
            self.broker.port().unwrap_or(5672)
        );
        self.accept_loop = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let broker = broker.clone();
                let handle = tokio::spawn(async move {
                    if let Ok(mut broker) = tokio::net::TcpStream::connect(broker).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
                connections.lock().unwrap().push(handle);
            }
        }));
    }

    /// Stops listening and drops every proxied connection, as a broker crash would.
    fn cut(&mut self) {
        if let Some(accept_loop) = self.accept_loop.take() {
            accept_loop.abort();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// A signed inbound-SMS form for a fresh MessageSid.
fn signed_sms(index: usize) -> (String, String, String) {
    let tokens = fixture_tokens();
    let sid = format!("SM{:032x}", uuid::Uuid::new_v4().as_u128() ^ index as u128);
    let params = vec![
        ("MessageSid".to_owned(), sid.clone()),
        ("AccountSid".to_owned(), tokens.account_sid.clone()),
        ("From".to_owned(), "+14155550100".to_owned()),
        ("To".to_owned(), "+15005550006".to_owned()),
        ("Body".to_owned(), format!("message number {index}")),
        ("NumMedia".to_owned(), "0".to_owned()),
    ];
    let url = format!("{}/webhooks/twilio/sms", tokens.public_base_url);
    let signature = compute_signature(&tokens.primary_auth_token, &url, &params);
    (
        format!("twilio:{sid}"),
        serde_urlencoded::to_string(&params).unwrap(),
        signature,
    )
}

async fn post_sms(client: &reqwest::Client, address: &str, body: &str, signature: &str) -> u16 {
    client
        .post(format!("{address}/webhooks/twilio/sms"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .expect("service answers")
        .status()
        .as_u16()
}

async fn accept_messages(app: &TestApp, count: usize, first_index: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for index in first_index..first_index + count {
        let (id, body, signature) = signed_sms(index);
        assert_eq!(
            post_sms(&app.client, &app.address, &body, &signature).await,
            200
        );
        ids.push(id);
    }
    ids
}

/// Waits for `expected.len()` messages, then for quiet; returns message ids in arrival order.
async fn receive_ids(tap: &mut BusTap, expected: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ids.len() < expected && tokio::time::Instant::now() < deadline {
        if let Some(delivery) = tap.next(Duration::from_secs(1)).await {
            ids.push(
                delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    for delivery in tap.collect_until_quiet(Duration::from_secs(2)).await {
        ids.push(
            delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string(),
        );
    }
    ids
}

fn outbox_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn messages_accepted_while_the_broker_is_unreachable_arrive_exactly_once_in_order() {
    let amqp = require_broker!();
    let mut proxy = BrokerProxy::unstarted(&amqp);
    let mut app = spawn_app_not_ready(Some(&proxy.url()), &[]).await;
    // Clean up through the broker itself: the proxy runs on this test's runtime, which the
    // clean-up blocks.
    app.amqp_url = Some(amqp.clone());
    assert_eq!(app.get("/readyz").await.status(), 503);

    let accepted = accept_messages(&app, 20, 0).await;
    assert_eq!(
        outbox_files(&app.outbox_dir),
        20,
        "every accepted event is on disk"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("ingress_egress_outbox_depth 20"),
        "{metrics}"
    );

    let mut tap = BusTap::bind(&amqp, &app.exchange, topics::INGRESS).await;
    proxy.start().await;
    let received = receive_ids(&mut tap, accepted.len()).await;
    assert_eq!(
        received, accepted,
        "each accepted message once, in acceptance order"
    );
    app.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(outbox_files(&app.outbox_dir), 0);
}

#[tokio::test]
async fn a_broker_lost_mid_stream_loses_nothing() {
    let amqp = require_broker!();
    let mut proxy = BrokerProxy::unstarted(&amqp);
    proxy.start().await;
    let mut app = spawn_app_not_ready(
        Some(&proxy.url()),
        &[("PUBLISH_CONFIRM_TIMEOUT_MS", "1000")],
    )
    .await;
    app.amqp_url = Some(amqp.clone());
    app.wait_ready(Duration::from_secs(15)).await;
    let mut tap = BusTap::bind(&amqp, &app.exchange, topics::INGRESS).await;

    let mut accepted = accept_messages(&app, 5, 0).await;
    proxy.cut();
    accepted.extend(accept_messages(&app, 5, 5).await);
    // The lost connection shows on /readyz until the supervisor reconnects.
    let mut saw_not_ready = false;
    for _ in 0..100 {
        if app.get("/readyz").await.status() == 503 {
            saw_not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        saw_not_ready,
        "/readyz kept saying ready with the broker gone"
    );
    proxy.start().await;
    accepted.extend(accept_messages(&app, 5, 10).await);

    let received = receive_ids(&mut tap, accepted.len()).await;
    // A publish whose confirm was lost in the cut may arrive twice, with the same message_id
    // (at least once, duplicates marked): dedupe by message_id, then nothing is missing.
    let unique: BTreeSet<&String> = received.iter().collect();
    assert_eq!(
        unique,
        accepted.iter().collect::<BTreeSet<_>>(),
        "every accepted message arrives"
    );
    assert!(
        received.len() <= accepted.len() + 1,
        "at most the in-flight publish repeats: {received:#?}"
    );
}

#[tokio::test]
async fn the_outbox_survives_kill_9_and_drains_after_restart() {
    let amqp = require_broker!();
    let outbox = tempfile::tempdir().unwrap();
    let unreachable = BrokerProxy::unstarted(&amqp);
    let mut vars = crate::helpers::base_vars(Some(&unreachable.url()));
    vars.insert("OUTBOX_DIR".into(), outbox.path().display().to_string());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    vars.insert("PORT".into(), port.to_string());
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    let spawn = |vars: &std::collections::BTreeMap<String, String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ingress-egress"))
            .env_clear()
            .envs(vars)
            // Away from the repository, whose .env the binary would read.
            .current_dir(outbox.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("binary starts")
    };
    let wait_healthy = |client: reqwest::Client, address: String| async move {
        for _ in 0..200 {
            if client
                .get(format!("{address}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("service did not start");
    };

    let mut first = spawn(&vars);
    wait_healthy(client.clone(), address.clone()).await;
    let mut accepted = Vec::new();
    for index in 0..5 {
        let (id, body, signature) = signed_sms(index);
        assert_eq!(post_sms(&client, &address, &body, &signature).await, 200);
        accepted.push(id);
    }
    first.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix: no shutdown hooks run.
    first.wait().unwrap();
    assert_eq!(outbox_files(outbox.path()), 5);

    let exchange = vars["AMQP_EXCHANGE"].clone();
    let mut tap = BusTap::bind(&amqp, &exchange, topics::INGRESS).await;
    vars.insert("AMQP_URL".into(), amqp.clone());
    let mut second = spawn(&vars);
    let received = receive_ids(&mut tap, accepted.len()).await;
    second.kill().unwrap();
    second.wait().unwrap();
    assert_eq!(received, accepted);
    assert_eq!(outbox_files(outbox.path()), 0);
    crate::helpers::delete_broker_objects(&amqp, &exchange, &vars["AMQP_EGRESS_QUEUE"]);
}
