//! The reference consumer (`examples/echo_bot.rs`, included here as a module and run as a
//! task) end to end: a signed SMS in, the bot's reply out through the fake Twilio, following
//! the contract of `openapi/asyncapi.yaml`.

use std::time::Duration;

use chrono::Utc;
use ingress_egress::envelope::topics;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{
    asyncapi::{headers_json, properties_json, violations, AsyncApi},
    egress_support::{delete_queue, egress_app, fake_twilio, next_matching, FROM},
    fake_twilio::Route,
    helpers::{fixture, header, TestApp},
    require_broker,
};

#[allow(dead_code)] // the example's `main` is not used here
#[path = "../../examples/echo_bot.rs"]
pub mod bot;

const WAIT: Duration = Duration::from_secs(20);

/// The echo bot consuming `app`'s exchange from a queue of its own, until the token is
/// cancelled; the queue is deleted afterwards.
pub struct RunningBot {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<lapin::Result<()>>,
    amqp_url: String,
    queue: String,
}

impl RunningBot {
    pub async fn start(app: &TestApp) -> Self {
        let amqp_url = app.amqp_url.clone().expect("the bot needs a broker");
        let config = bot::Config {
            amqp_url: amqp_url.clone(),
            exchange: app.exchange.clone(),
            prefix: app.settings.bus.prefix.clone(),
            queue: format!("{}.echo-bot", app.egress_queue),
        };
        let stop = CancellationToken::new();
        let queue = config.queue.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(bot::run(config, async move { stopped.cancelled().await }));
        // The bot's queue exists (and is bound) once its consumer is registered.
        let deadline = tokio::time::Instant::now() + WAIT;
        while !queue_has_consumer(&amqp_url, &queue).await {
            assert!(!task.is_finished(), "the echo bot stopped early");
            assert!(
                tokio::time::Instant::now() < deadline,
                "echo bot not consuming"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            stop,
            task,
            amqp_url,
            queue,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let result = self.task.await.expect("the bot task does not panic");
        result.expect("the bot ran without broker errors");
        // Only the queue: the exchange belongs to the app.
        delete_queue(&self.amqp_url, &self.queue).await;
    }
}

async fn queue_has_consumer(amqp_url: &str, queue: &str) -> bool {
    let Ok(connection) =
        lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await
    else {
        return false;
    };
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let consumers = match connection.create_channel().await {
        Ok(channel) => channel
            .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
            .await
            .map(|q| q.consumer_count())
            .unwrap_or(0),
        Err(_) => 0,
    };
    let _ = connection.close(200, "probe".into()).await;
    consumers > 0
}

#[tokio::test]
async fn a_signed_sms_is_answered_by_the_echo_bot_through_twilio() {
    let amqp = require_broker!();
    let fake = fake_twilio().await;
    let app = egress_app(&amqp, &fake, &[]).await;
    let mut replies = app.tap(topics::EGRESS).await;
    let mut statuses = app.tap(topics::EGRESS_STATUS).await;
    let bot = RunningBot::start(&app).await;

    let sms = fixture("sms_basic");
    let param = |name: &str| sms.param(name);
    assert_eq!(app.post_fixture(&sms).await.status(), 200);

    let sent = fake.wait_for_requests(Route::Messages, 1, WAIT).await;
    assert_eq!(sent.len(), 1);
    let request = &sent[0];
    assert_eq!(
        request.param("Body"),
        Some(format!("echo: {}", param("Body").trim()).as_str())
    );
    assert_eq!(request.param("To"), Some(param("From").as_str()));
    assert_eq!(request.param("From"), Some(param("To").as_str()));
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());

    // The reply as the bot published it follows the contract for replies.
    let reply = replies
        .next(WAIT)
        .await
        .expect("the bot's reply on the bus");
    let message_id = reply.properties.message_id().as_ref().unwrap().to_string();
    assert_eq!(
        message_id,
        format!("echo-bot:twilio:{}", param("MessageSid"))
    );
    let asyncapi = AsyncApi::load();
    let contract = asyncapi.resolve(&asyncapi.doc()["components"]["messages"]["reply"]);
    let envelope: Value = serde_json::from_slice(&reply.data).unwrap();
    let mut problems = violations("payload", &contract["payload"]["schema"], &envelope);
    problems.extend(violations(
        "properties",
        &contract["x-amqp-properties"],
        &properties_json(&reply),
    ));
    problems.extend(violations(
        "headers",
        &contract["headers"],
        &headers_json(&reply),
    ));
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        header(&reply, "traceparent").is_some(),
        "the bot keeps the trace"
    );

    // The outcome carries the inbound message's correlation id.
    let status = next_matching(&mut statuses, |s| s["status"] == "sent").await;
    assert_eq!(status["correlationId"], envelope["correlationId"]);
    assert_eq!(status["eventMessageId"], message_id.as_str());

    bot.stop().await;
}

#[test]
fn the_bot_replies_only_to_users_chat_messages_with_stable_ids() {
    let inbound = serde_json::json!({
        "v": "2",
        "correlationId": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
        "type": "chat.message.v1",
        "ingress": {"ingressAt": "2026-01-01T00:00:00Z", "source": "ingress.twilio", "connector": "twilio", "channel": "+14155550100"},
        "identity": {"external": {"id": "+14155550100", "platform": "twilio"}},
        "egress": {"destination": "internal.egress.v1", "connector": "twilio", "type": "chat", "channel": "+14155550100",
                   "metadata": {"twilio": {"from": FROM}}},
        "routing": {"stage": "initial", "slip": [], "history": []},
        "message": {"id": "SM1", "role": "user", "text": " hi there "}
    });
    let now = Utc::now();
    let reply = bot::reply_to(
        &inbound,
        Some("twilio:SM1"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        now,
    )
    .expect("a user's text is answered");
    assert_eq!(reply.message_id, "echo-bot:twilio:SM1");
    assert_eq!(reply.correlation_id, "1b4e28ba-2fa1-11d2-883f-0016d3cca427");
    assert_eq!(reply.envelope["candidates"][0]["text"], "echo: hi there");
    assert_eq!(reply.envelope["candidates"][0]["status"], "selected");
    assert_eq!(reply.envelope["routing"]["stage"], "responded");
    assert_eq!(reply.envelope["traceId"], inbound["traceId"]);
    assert_eq!(reply.envelope["egress"], inbound["egress"]);
    let again = bot::reply_to(&inbound, Some("twilio:SM1"), None, now).unwrap();
    assert_eq!(
        again.message_id, reply.message_id,
        "a redelivery yields the same reply id"
    );

    let mut assistant = inbound.clone();
    assistant["message"]["role"] = "assistant".into();
    assert!(bot::reply_to(&assistant, None, None, now).is_none());
    let mut empty = inbound.clone();
    empty["message"]["text"] = "  ".into();
    assert!(bot::reply_to(&empty, None, None, now).is_none());
    let mut status = inbound;
    status["type"] = "message.status.v1".into();
    assert!(bot::reply_to(&status, None, None, now).is_none());
}
