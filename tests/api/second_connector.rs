//! The core is platform-neutral: a second, test-only connector ("memo", an in-memory sink with
//! its own snapshot) registered beside Twilio gets the egress events addressed to it, Twilio
//! gets its own, each under its own `connector` metric label, and `/_debug/memo` serves the
//! memo connector's snapshot.

use std::sync::{Arc, Mutex};

use actix_web::web;
use futures_util::future::BoxFuture;
use ingress_egress::{
    connectors::{Connector, ConnectorContext},
    egress::sink::{
        Accepted, EgressSink, InvalidTarget, Outbound, SendFailure, SinkPolicy, TextInfo,
    },
};
use secrecy::SecretString;
use serde_json::{json, Map, Value};

use crate::{
    conversations::metric,
    egress_support::{fake_twilio, next_matching, reply_to, twilio_vars, EgressPublisher},
    fake_twilio::Route,
    helpers::spawn_app_with_connectors,
    require_broker,
};

const MEMO: &str = "memo";

/// What the memo sink was asked to send: (target, text).
type Outbox = Arc<Mutex<Vec<(String, String)>>>;

struct MemoConnector {
    sink: Arc<MemoSink>,
}

struct MemoSink {
    sent: Outbox,
}

impl Connector for MemoConnector {
    fn name(&self) -> &'static str {
        MEMO
    }

    fn configure_routes(&self, _config: &mut web::ServiceConfig) {}

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        utoipa::openapi::OpenApi::default()
    }

    fn egress_sink(&self) -> Option<Arc<dyn EgressSink>> {
        Some(self.sink.clone())
    }

    fn snapshot(&self) -> Value {
        json!({"delivered": self.sink.sent.lock().unwrap().len()})
    }

    fn secrets(&self) -> Vec<&SecretString> {
        Vec::new()
    }
}

impl EgressSink for MemoSink {
    fn connector(&self) -> &'static str {
        MEMO
    }

    fn policy(&self) -> SinkPolicy {
        SinkPolicy {
            max_send_rate: 1000.0,
            ..SinkPolicy::default()
        }
    }

    fn check_target(&self, target: &str) -> Result<(), InvalidTarget> {
        target
            .starts_with("memo:")
            .then_some(())
            .ok_or_else(|| InvalidTarget("memo targets start with memo:".into()))
    }

    fn split_text(&self, _target: &str, text: &str) -> Vec<String> {
        vec![text.to_owned()]
    }

    fn describe_text(&self, text: &str) -> TextInfo {
        TextInfo {
            characters: text.chars().count(),
            encoding: None,
            segments: 1,
        }
    }

    fn max_media_per_part(&self, _target: &str) -> usize {
        1
    }

    fn sender_key(&self, _target: &str, _metadata: &Map<String, Value>) -> String {
        MEMO.to_owned()
    }

    fn send<'a>(&'a self, part: Outbound<'a>) -> BoxFuture<'a, Result<Accepted, SendFailure>> {
        Box::pin(async move {
            let mut sent = self.sent.lock().unwrap();
            sent.push((
                part.target.to_owned(),
                part.text.unwrap_or_default().to_owned(),
            ));
            Ok(Accepted {
                provider_sid: Some(format!("memo-{}", sent.len())),
            })
        })
    }
}

fn memo_event(target: &str, text: &str) -> Value {
    let mut event = reply_to(target, text);
    event["egress"]["connector"] = json!(MEMO);
    event["egress"]["metadata"] = json!({});
    event["ingress"]["connector"] = json!(MEMO);
    event
}

#[tokio::test]
async fn egress_events_reach_the_sink_of_the_connector_they_name() {
    let amqp = require_broker!();
    let fake = fake_twilio().await;
    let sent: Outbox = Arc::default();
    let memo_sent = sent.clone();
    let vars = twilio_vars(&fake);
    let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = spawn_app_with_connectors(
        Some(&amqp),
        &borrowed,
        vec![Box::new(move |_context: &ConnectorContext| {
            Arc::new(MemoConnector {
                sink: Arc::new(MemoSink { sent: memo_sent }),
            }) as Arc<dyn Connector>
        })],
    )
    .await;
    app.wait_ready(std::time::Duration::from_secs(15)).await;
    let mut status = app.tap("internal.egress.status.v1").await;
    let mut dead = app.tap("internal.deadletter.v1").await;
    let publisher = EgressPublisher::new(&app).await;

    let to_memo = publisher
        .publish(&memo_event("memo:alice", "for the memo connector"))
        .await;
    let to_twilio = publisher
        .publish(&reply_to("+14155550100", "for Twilio"))
        .await;
    let mut nobody = memo_event("memo:bob", "nobody serves this");
    nobody["egress"]["connector"] = json!("carrier-pigeon");
    let to_nobody = publisher.publish(&nobody).await;

    for id in [&to_memo, &to_twilio] {
        let event = next_matching(&mut status, |e| {
            e["eventMessageId"] == json!(id) && e["status"] == "sent"
        })
        .await;
        assert!(event["providerSid"].is_string(), "{event}");
    }
    let letter = next_matching(&mut dead, |e| e["eventMessageId"] == json!(to_nobody)).await;
    assert_eq!(letter["reason"], "unknown_connector");

    assert_eq!(
        *sent.lock().unwrap(),
        vec![("memo:alice".to_owned(), "for the memo connector".to_owned())],
        "the memo sink got exactly its own event"
    );
    let twilio_sends = fake.created(Route::Messages);
    assert_eq!(twilio_sends.len(), 1, "Twilio got exactly its own event");
    assert_eq!(twilio_sends[0].param("Body"), Some("for Twilio"));
    fake.assert_no_violations();

    for connector in [MEMO, "twilio"] {
        assert_eq!(
            metric(
                &app,
                "ingress_egress_egress_sends_total",
                &[("connector", connector), ("outcome", "sent")]
            )
            .await,
            1.0,
            "{connector}"
        );
    }
    assert_eq!(
        metric(
            &app,
            "ingress_egress_egress_sends_total",
            &[("connector", "none"), ("outcome", "dead_lettered")]
        )
        .await,
        1.0
    );

    let snapshot: Value = app.get("/_debug/memo").await.json().await.unwrap();
    assert_eq!(snapshot["connector"], MEMO);
    assert_eq!(snapshot[MEMO]["delivered"], 1);
    let twilio: Value = app.get("/_debug/twilio").await.json().await.unwrap();
    assert_eq!(twilio["connector"], "twilio");
    assert_eq!(twilio["twilio"]["counters"]["egressSent"], 1);
    assert_eq!(app.get("/_debug/carrier-pigeon").await.status(), 404);
}
