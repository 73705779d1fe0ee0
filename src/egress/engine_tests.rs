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

use super::{
    process::{Acker, Engine, EngineConfig, Incoming},
    sink::{Accepted, EgressSink, Outbound, SendFailure},
};
use crate::{
    bus::{memory::MemoryBus, Bus, BusMessage},
    metrics::Metrics,
    outbox::Outbox,
    publisher::EventPublisher,
};

#[derive(Clone, Debug)]
struct Sent {
    target: String,
    token: String,
    text: Option<String>,
    at: Instant,
}

#[derive(Default)]
struct ScriptedSink {
    script: Mutex<HashMap<String, VecDeque<Result<(), SendFailure>>>>,
    log: Mutex<Vec<Sent>>,
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
}

fn retryable(retry_after: Option<Duration>) -> SendFailure {
    SendFailure {
        retryable: true,
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
        "twilio"
    }

    fn check_target(&self, target: &str) -> Result<(), String> {
        if target.starts_with('+') {
            Ok(())
        } else {
            Err("not a number".into())
        }
    }

    fn max_text_units(&self, _target: &str) -> usize {
        1600
    }

    fn max_media_per_part(&self, _target: &str) -> usize {
        10
    }

    fn sender_key(&self, _target: &str, _metadata: &Map<String, Value>) -> String {
        "the-one-sender".into()
    }

    async fn send<'a>(&'a self, part: Outbound<'a>) -> Result<Accepted, SendFailure> {
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
            provider_segments: None,
        })
    }
}

struct Harness {
    engine: Arc<Engine<ScriptedSink>>,
    sink: Arc<ScriptedSink>,
    bus: MemoryBus,
    metrics: Metrics,
    shutdown: CancellationToken,
    _outbox: tempfile::TempDir,
}

fn harness(config: EngineConfig) -> Harness {
    let bus = MemoryBus::new(String::new());
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let publisher = EventPublisher::new(
        Bus::Memory(bus.clone()),
        Outbox::open(dir.path()).unwrap(),
        Duration::from_secs(60),
        Duration::from_secs(1),
        metrics.clone(),
    );
    let sink = Arc::new(ScriptedSink::default());
    let shutdown = CancellationToken::new();
    let engine = Engine::new(
        sink.clone(),
        publisher,
        metrics.clone(),
        config,
        shutdown.clone(),
    );
    Harness {
        engine,
        sink,
        bus,
        metrics,
        shutdown,
        _outbox: dir,
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        max_attempts: 4,
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
        max_send_rate: 1000.0,
        burst: 1,
    }
}

fn incoming(target: &str, text: &str) -> Incoming {
    let event = json!({
        "v": "2",
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "type": "chat.message.v1",
        "ingress": {"ingressAt": "2026-01-01T00:00:00Z", "source": "test", "connector": "twilio", "channel": target},
        "identity": {"external": {"id": target, "platform": "twilio"}},
        "egress": {"destination": "internal.egress.v1", "connector": "twilio", "type": "chat", "channel": target},
        "routing": {"stage": "responded", "slip": [], "history": []},
        "message": {"id": "m", "role": "assistant", "text": text}
    });
    Incoming {
        body: serde_json::to_vec(&event).unwrap(),
        message_id: Some(format!("test:{}", uuid::Uuid::new_v4())),
        timestamp: None,
        redelivered: false,
        acker: Acker::None,
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
    let h = harness(EngineConfig {
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
    assert_eq!(dead[0]["twilioErrorCode"], 20429);
    let status = published(&h.bus, "internal.egress.status.v1");
    assert_eq!(status[0]["status"], "dead_lettered");
}

#[tokio::test(start_paused = true)]
async fn one_sender_is_held_to_the_send_rate() {
    let h = harness(EngineConfig {
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
async fn a_redelivered_event_gets_the_same_tokens() {
    let h = harness(config());
    let text = "Sentence number one is here. ".repeat(80);
    let first = incoming("+1555000001", &text);
    let again = Incoming {
        body: first.body.clone(),
        message_id: first.message_id.clone(),
        timestamp: None,
        redelivered: true,
        acker: Acker::None,
    };
    h.engine.accept(first).await;
    h.engine.accept(again).await;
    let log = h.sink.log();
    let half = log.len() / 2;
    assert!(half >= 2, "the text was split");
    let tokens = |sends: &[Sent]| sends.iter().map(|s| s.token.clone()).collect::<Vec<_>>();
    assert_eq!(tokens(&log[..half]), tokens(&log[half..]));
    let distinct: std::collections::BTreeSet<_> = tokens(&log[..half]).into_iter().collect();
    assert_eq!(distinct.len(), half, "each part has its own token");
}

#[test]
fn without_a_message_id_the_body_identifies_the_event() {
    let event = |body: &[u8], id: Option<&str>| Incoming {
        body: body.to_vec(),
        message_id: id.map(str::to_owned),
        timestamp: None,
        redelivered: false,
        acker: Acker::None,
    };
    assert_eq!(event(b"a", None).key(), event(b"a", None).key());
    assert_ne!(event(b"a", None).key(), event(b"b", None).key());
    assert_eq!(event(b"a", Some("m1")).key(), event(b"b", Some("m1")).key());
    assert_eq!(event(b"a", Some(" ")).key(), event(b"a", None).key());
    assert_ne!(
        super::process::part_token("mid:m1", 0, 2),
        super::process::part_token("mid:m1", 1, 2)
    );
}
