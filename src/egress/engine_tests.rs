//! Engine tests under tokio's paused clock, with a scripted in-memory sink and the embedded
//! bus: retries honour `Retry-After` and reuse the token, a retrying recipient does not hold up
//! others, attempts are bounded, the rate limit spaces one sender's sends, shutdown requeues.
//! Times are virtual (paused clock), never wall-clock.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use futures_util::future::BoxFuture;

use super::{
    engine::{part_token, Engine, EngineConfig},
    ledger::SendLedger,
    sink::{
        Accepted, EgressSink, InvalidTarget, Outbound, Resolution, SendFailure, SinkPolicy,
        TextInfo,
    },
};
use crate::{
    bus::{
        delivery::{DeliveryHandle, Received},
        memory::{MemoryBus, MemorySettle},
        Bus, BusMessage,
    },
    metrics::Metrics,
    outbox::Outbox,
    publisher::EventPublisher,
    state::memory::MemoryStore,
};

#[derive(Clone, Debug)]
struct Sent {
    target: String,
    token: String,
    text: Option<String>,
    at: Instant,
}

struct ScriptedSink {
    policy: SinkPolicy,
    script: Mutex<HashMap<String, VecDeque<Result<(), SendFailure>>>>,
    log: Mutex<Vec<Sent>>,
    resolutions: Mutex<HashMap<String, VecDeque<Resolution>>>,
    resolve_calls: Mutex<usize>,
}

impl ScriptedSink {
    fn script(&self, target: &str, replies: Vec<Result<(), SendFailure>>) {
        self.script
            .lock()
            .unwrap()
            .insert(target.to_owned(), replies.into());
    }

    fn log(&self) -> Vec<Sent> {
        self.log.lock().unwrap().clone()
    }

    fn resolutions(&self, target: &str, answers: Vec<Resolution>) {
        self.resolutions
            .lock()
            .unwrap()
            .insert(target.to_owned(), answers.into());
    }

    fn resolve_calls(&self) -> usize {
        *self.resolve_calls.lock().unwrap()
    }
}

fn retryable(retry_after: Option<Duration>) -> SendFailure {
    SendFailure {
        retryable: true,
        ambiguous: false,
        opted_out: false,
        retry_after,
        http_status: Some(429),
        error_code: Some(20429),
        reason: "provider_rejected",
        message: "too many requests".into(),
    }
}

impl EgressSink for ScriptedSink {
    fn connector(&self) -> &'static str {
        "scripted"
    }

    fn policy(&self) -> SinkPolicy {
        self.policy
    }

    fn check_target(&self, target: &str) -> Result<(), InvalidTarget> {
        if target.starts_with('+') {
            Ok(())
        } else {
            Err(InvalidTarget("not a number".into()))
        }
    }

    fn split_text(&self, _target: &str, text: &str) -> Vec<String> {
        // Whole sentences, at most 1600 bytes a part (the texts here are ASCII).
        let mut parts: Vec<String> = Vec::new();
        for sentence in text.split_inclusive(". ") {
            match parts.last_mut() {
                Some(last) if last.len() + sentence.len() <= 1600 => last.push_str(sentence),
                _ => parts.push(sentence.to_owned()),
            }
        }
        parts.into_iter().map(|p| p.trim().to_owned()).collect()
    }

    fn describe_text(&self, text: &str) -> TextInfo {
        TextInfo {
            characters: text.chars().count(),
            encoding: None,
            segments: u32::from(!text.is_empty()),
        }
    }

    fn max_media_per_part(&self, _target: &str) -> usize {
        10
    }

    fn sender_key(&self, _target: &str, _metadata: &Map<String, Value>) -> String {
        "the-one-sender".into()
    }

    fn send<'a>(&'a self, part: Outbound<'a>) -> BoxFuture<'a, Result<Accepted, SendFailure>> {
        Box::pin(self.send_now(part))
    }

    fn resolve<'a>(
        &'a self,
        part: Outbound<'a>,
        _since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, Result<Resolution, SendFailure>> {
        *self.resolve_calls.lock().unwrap() += 1;
        let answer = self
            .resolutions
            .lock()
            .unwrap()
            .get_mut(part.target)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Resolution::NotFound);
        Box::pin(async move { Ok(answer) })
    }
}

impl ScriptedSink {
    async fn send_now(&self, part: Outbound<'_>) -> Result<Accepted, SendFailure> {
        self.log.lock().unwrap().push(Sent {
            target: part.target.to_owned(),
            token: part.idempotency_token.to_owned(),
            text: part.text.map(str::to_owned),
            at: Instant::now(),
        });
        let reply = self
            .script
            .lock()
            .unwrap()
            .get_mut(part.target)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Ok(()));
        reply.map(|()| Accepted {
            provider_sid: Some(format!("SM{}", part.part_index)),
        })
    }
}

struct Harness {
    engine: Arc<Engine>,
    ledger: SendLedger,
    sink: Arc<ScriptedSink>,
    bus: MemoryBus,
    metrics: Metrics,
    shutdown: CancellationToken,
    _outbox: tempfile::TempDir,
}

/// The engine's and the sink's limits in one place.
#[derive(Clone, Copy)]
struct Limits {
    max_attempts: u32,
    retry_base: Duration,
    retry_max: Duration,
    max_send_rate: f64,
    burst: u32,
}

fn harness(limits: Limits) -> Harness {
    let bus = MemoryBus::new(String::new());
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let publisher = EventPublisher::new(
        Bus::Memory(bus.clone()),
        Outbox::open(dir.path()).unwrap(),
        Arc::new(MemoryStore::default()),
        Duration::from_secs(60),
        Duration::from_secs(1),
        metrics.clone(),
    );
    let sink = Arc::new(ScriptedSink {
        policy: SinkPolicy {
            max_attempts: limits.max_attempts,
            max_send_rate: limits.max_send_rate,
            burst: limits.burst,
        },
        script: Mutex::default(),
        log: Mutex::default(),
        resolutions: Mutex::default(),
        resolve_calls: Mutex::default(),
    });
    let shutdown = CancellationToken::new();
    let ledger = SendLedger::new(Arc::new(MemoryStore::default()));
    let engine = Engine::new(
        vec![sink.clone() as Arc<dyn EgressSink>],
        publisher,
        ledger.clone(),
        metrics.clone(),
        EngineConfig {
            retry_base: limits.retry_base,
            retry_max: limits.retry_max,
            max_parts: 5,
            ..EngineConfig::default()
        },
        shutdown.clone(),
    );
    Harness {
        engine,
        ledger,
        sink,
        bus,
        metrics,
        shutdown,
        _outbox: dir,
    }
}

fn config() -> Limits {
    Limits {
        max_attempts: 4,
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
        max_send_rate: 1000.0,
        burst: 1,
    }
}

pub(super) fn incoming(target: &str, text: &str) -> Received {
    let event = json!({
        "v": "2",
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "type": "chat.message.v1",
        "ingress": {"ingressAt": "2026-01-01T00:00:00Z", "source": "test", "connector": "scripted", "channel": target},
        "identity": {"external": {"id": target, "platform": "scripted"}},
        "egress": {"destination": "internal.egress.v1", "connector": "scripted", "type": "chat", "channel": target},
        "routing": {"stage": "responded", "slip": [], "history": []},
        "message": {"id": "m", "role": "assistant", "text": text}
    });
    Received {
        body: serde_json::to_vec(&event).unwrap(),
        message_id: Some(format!("test:{}", uuid::Uuid::new_v4())),
        timestamp: None,
        trace_parent: None,
        redelivered: false,
        handle: DeliveryHandle::new(MemorySettle),
    }
}

fn published(bus: &MemoryBus, topic: &str) -> Vec<Value> {
    bus.recent()
        .iter()
        .filter(|m: &&BusMessage| m.topic == topic)
        .map(|m| serde_json::from_str(&m.body).unwrap())
        .collect()
}

fn requeued(metrics: &Metrics) -> u64 {
    metrics.egress_events.with_label_values(&["requeued"]).get()
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_every_attempt_reuses_the_token() {
    let h = harness(config());
    h.sink.script(
        "+1555000001",
        vec![Err(retryable(Some(Duration::from_secs(7)))), Ok(())],
    );
    h.engine.accept(incoming("+1555000001", "hello")).await;
    let log = h.sink.log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].token, log[1].token);
    assert!(
        log[1].at - log[0].at >= Duration::from_secs(7),
        "second attempt came {:?} after the first",
        log[1].at - log[0].at
    );
    let status = published(&h.bus, "internal.egress.status.v1");
    assert_eq!(status.len(), 1);
    assert_eq!(status[0]["status"], "sent");
    assert_eq!(status[0]["attempts"], 2);
}

#[tokio::test(start_paused = true)]
async fn a_retrying_recipient_does_not_hold_up_other_recipients() {
    let h = harness(config());
    h.sink.script(
        "+1555000001",
        vec![Err(retryable(Some(Duration::from_secs(10)))), Ok(())],
    );
    let start = Instant::now();
    let slow = tokio::spawn(h.engine.accept(incoming("+1555000001", "slow")));
    let fast = tokio::spawn(h.engine.accept(incoming("+1555000002", "fast")));
    fast.await.unwrap();
    slow.await.unwrap();
    let log = h.sink.log();
    let fast_at = log.iter().find(|s| s.target == "+1555000002").unwrap().at;
    let slow_retry_at = log
        .iter()
        .filter(|s| s.target == "+1555000001")
        .nth(1)
        .unwrap()
        .at;
    assert!(fast_at - start < Duration::from_secs(1));
    assert!(fast_at < slow_retry_at);
}

#[tokio::test(start_paused = true)]
async fn the_same_recipient_waits_for_its_earlier_event_even_when_it_retries() {
    let h = harness(config());
    h.sink.script(
        "+1555000001",
        vec![Err(retryable(Some(Duration::from_secs(3)))), Ok(()), Ok(())],
    );
    let first = tokio::spawn(h.engine.accept(incoming("+1555000001", "first")));
    let second = tokio::spawn(h.engine.accept(incoming("+1555000001", "second")));
    first.await.unwrap();
    second.await.unwrap();
    let texts: Vec<_> = h.sink.log().into_iter().map(|s| s.text.unwrap()).collect();
    assert_eq!(texts, vec!["first", "first", "second"]);
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded_then_the_event_is_dead_lettered() {
    let h = harness(Limits {
        max_attempts: 3,
        ..config()
    });
    h.sink.script(
        "+1555000001",
        (0..10).map(|_| Err(retryable(None))).collect(),
    );
    h.engine.accept(incoming("+1555000001", "never")).await;
    assert_eq!(h.sink.log().len(), 3);
    let dead = published(&h.bus, "internal.deadletter.v1");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "retries_exhausted");
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["scriptedErrorCode"], 20429);
    let status = published(&h.bus, "internal.egress.status.v1");
    assert_eq!(status[0]["status"], "dead_lettered");
}

#[tokio::test(start_paused = true)]
async fn one_sender_is_held_to_the_send_rate() {
    let h = harness(Limits {
        max_send_rate: 1.0,
        ..config()
    });
    let start = Instant::now();
    let tasks: Vec<_> = (1..=3)
        .map(|i| tokio::spawn(h.engine.accept(incoming(&format!("+155500000{i}"), "hi"))))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut offsets: Vec<_> = h.sink.log().iter().map(|s| s.at - start).collect();
    offsets.sort();
    assert_eq!(
        offsets,
        vec![
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(2)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_requeues_instead_of_retrying_or_starting_new_sends() {
    let h = harness(config());
    h.sink.script(
        "+1555000001",
        vec![Err(retryable(Some(Duration::from_secs(60))))],
    );
    let retrying = tokio::spawn(h.engine.accept(incoming("+1555000001", "a")));
    let waiting = tokio::spawn(h.engine.accept(incoming("+1555000001", "b")));
    while h.sink.log().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.shutdown.cancel();
    retrying.await.unwrap();
    waiting.await.unwrap();
    assert_eq!(h.sink.log().len(), 1, "no attempt after shutdown");
    assert_eq!(requeued(&h.metrics), 2);
    assert!(published(&h.bus, "internal.egress.status.v1").is_empty());
    assert!(published(&h.bus, "internal.deadletter.v1").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_redelivered_event_whose_parts_were_sent_is_not_sent_again() {
    let h = harness(config());
    let text = "Sentence number one is here. ".repeat(80);
    let first = incoming("+1555000001", &text);
    let again = Received {
        body: first.body.clone(),
        message_id: first.message_id.clone(),
        timestamp: None,
        trace_parent: None,
        redelivered: true,
        handle: DeliveryHandle::new(MemorySettle),
    };
    h.engine.accept(first).await;
    let parts = h.sink.log().len();
    assert!(parts >= 2, "the text was split");
    let tokens: std::collections::BTreeSet<_> = h.sink.log().into_iter().map(|s| s.token).collect();
    assert_eq!(tokens.len(), parts, "each part has its own token");

    h.engine.accept(again).await;
    assert_eq!(h.sink.log().len(), parts, "nothing sent again");
    let statuses = published(&h.bus, "internal.egress.status.v1");
    assert_eq!(statuses.len(), 2);
    assert_eq!(statuses[1]["status"], "sent");
    for detail in statuses[1]["partDetails"].as_array().unwrap() {
        assert_eq!(detail["resolvedBy"], "ledger");
        assert!(detail["providerSid"].is_string());
    }
}

fn ambiguous() -> SendFailure {
    SendFailure {
        ambiguous: true,
        http_status: Some(500),
        error_code: Some(20500),
        ..retryable(None)
    }
}

#[tokio::test(start_paused = true)]
async fn after_an_ambiguous_attempt_the_part_is_looked_for_before_it_is_sent_again() {
    let h = harness(config());
    // Created but the answer was lost: the lookup finds it, nothing is sent twice.
    h.sink.script("+1555000001", vec![Err(ambiguous())]);
    h.sink.resolutions(
        "+1555000001",
        vec![Resolution::Found {
            provider_sid: "SMfound".into(),
            how: "listing",
        }],
    );
    h.engine.accept(incoming("+1555000001", "once")).await;
    assert_eq!(h.sink.log().len(), 1);
    assert_eq!(h.sink.resolve_calls(), 1);
    let status = &published(&h.bus, "internal.egress.status.v1")[0];
    assert_eq!(status["status"], "sent");
    assert_eq!(status["providerSid"], "SMfound");
    assert_eq!(status["partDetails"][0]["resolvedBy"], "listing");

    // Not created: the lookup says so and the part is sent again, once.
    h.sink.script("+1555000002", vec![Err(ambiguous()), Ok(())]);
    h.sink
        .resolutions("+1555000002", vec![Resolution::NotFound]);
    h.engine.accept(incoming("+1555000002", "twice")).await;
    let to_second: Vec<_> = h
        .sink
        .log()
        .into_iter()
        .filter(|s| s.target == "+1555000002")
        .collect();
    assert_eq!(to_second.len(), 2);
    assert_eq!(to_second[0].token, to_second[1].token);
    assert_eq!(
        published(&h.bus, "internal.egress.status.v1")[1]["status"],
        "sent"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_attempt_is_not_looked_for() {
    let h = harness(config());
    h.sink
        .script("+1555000001", vec![Err(retryable(None)), Ok(())]);
    h.engine.accept(incoming("+1555000001", "hi")).await;
    assert_eq!(h.sink.log().len(), 2);
    assert_eq!(h.sink.resolve_calls(), 0, "a 429 created nothing");
}

#[tokio::test(start_paused = true)]
async fn a_crash_between_send_and_record_is_resolved_on_redelivery() {
    let h = harness(config());
    let event = incoming("+1555000001", "after the crash");
    let key = event.key();
    // What a crash right after the send leaves: the intent, no answer.
    h.ledger
        .pending(&part_token(&key, 0, 1), chrono::Utc::now())
        .await
        .unwrap();
    h.sink.resolutions(
        "+1555000001",
        vec![Resolution::Found {
            provider_sid: "SMbefore".into(),
            how: "attributes",
        }],
    );
    h.engine.accept(event).await;
    assert!(h.sink.log().is_empty(), "not sent again");
    assert_eq!(
        published(&h.bus, "internal.egress.status.v1")[0]["providerSid"],
        "SMbefore"
    );
}

#[test]
fn without_a_message_id_the_body_identifies_the_event() {
    let event = |body: &[u8], id: Option<&str>| Received {
        body: body.to_vec(),
        message_id: id.map(str::to_owned),
        timestamp: None,
        trace_parent: None,
        redelivered: false,
        handle: DeliveryHandle::new(MemorySettle),
    };
    assert_eq!(event(b"a", None).key(), event(b"a", None).key());
    assert_ne!(event(b"a", None).key(), event(b"b", None).key());
    assert_eq!(event(b"a", Some("m1")).key(), event(b"b", Some("m1")).key());
    assert_eq!(event(b"a", Some(" ")).key(), event(b"a", None).key());
    assert_ne!(part_token("mid:m1", 0, 2), part_token("mid:m1", 1, 2));
}

#[tokio::test(start_paused = true)]
async fn a_text_longer_than_the_part_limit_is_dead_lettered_without_sending() {
    let h = harness(config());
    // Six parts of whole sentences (the harness allows five).
    let text = "Sentence number one is here. ".repeat(55 * 6);
    h.engine.accept(incoming("+1555000001", &text)).await;
    assert!(h.sink.log().is_empty(), "nothing billed");
    let dead = published(&h.bus, "internal.deadletter.v1");
    assert_eq!(dead[0]["reason"], "too_long");
    let detail = dead[0]["detail"].as_str().unwrap();
    assert!(detail.contains("at most 5"), "{detail}");
    let status = published(&h.bus, "internal.egress.status.v1");
    assert_eq!(status[0]["status"], "dead_lettered");
    assert_eq!(status[0]["reason"], "too_long");
}
