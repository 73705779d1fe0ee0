//! Egress shutdown against a real RabbitMQ: the consumer is run on its own (as `startup` runs
//! it) so the test can signal shutdown. An in-flight send finishes and is acked; a send waiting
//! to retry is requeued; nothing is consumed after the signal.

use std::sync::Arc;
use std::time::Duration;

use ingress_egress::{
    auth::BearerAuth,
    bus::Bus,
    configuration::Settings,
    connectors::{
        twilio::{config::TwilioSettings, TwilioConnector},
        Connector, ConnectorContext,
    },
    egress::{self, engine::EngineConfig, ledger::SendLedger, EgressSetup},
    metrics::Metrics,
    outbox::Outbox,
    publisher::EventPublisher,
    readiness::ReadyFlag,
    state::file::FileStore,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    egress_support::{fake_twilio, killable_vars, next_matching, reply_to, EgressPublisher},
    fake_twilio::{FakeTwilio, Reply, Route},
    helpers::{delete_broker_objects, inspect_queue, BusTap},
    require_broker,
};

struct Consumer {
    settings: Settings,
    bus: Bus,
    shutdown: CancellationToken,
    ready: ReadyFlag,
    task: Option<JoinHandle<()>>,
    _outbox: tempfile::TempDir,
}

impl Consumer {
    async fn start(url: &str, fake: &FakeTwilio) -> Consumer {
        let outbox = tempfile::tempdir().unwrap();
        let settings = Settings::from_vars(killable_vars(url, fake, outbox.path())).unwrap();
        let metrics = Metrics::new();
        let bus = Bus::from_settings(&settings.bus);
        let publisher = EventPublisher::new(
            bus.clone(),
            Outbox::open(outbox.path()).unwrap(),
            Arc::new(ingress_egress::state::memory::MemoryStore::default()),
            settings.dedupe_ttl,
            settings.bus.confirm_timeout,
            metrics.clone(),
        );
        let shutdown = CancellationToken::new();
        let state = Arc::new(FileStore::open(outbox.path().join("state")).unwrap());
        let ledger = SendLedger::new(state.clone());
        let context = ConnectorContext {
            settings: Arc::new(settings.clone()),
            publisher: publisher.clone(),
            metrics: metrics.clone(),
            operator_auth: BearerAuth::operator(&settings),
            state,
            ledger: ledger.clone(),
            shutdown: shutdown.clone(),
        };
        let twilio =
            TwilioSettings::from_environment(&settings.environment, settings.app_env).unwrap();
        let connector = TwilioConnector::new(&context, twilio).expect("connector builds");
        let (ready, task) = egress::start(
            EgressSetup {
                sinks: connector.egress_sink().into_iter().collect(),
                config: EngineConfig::default(),
                publisher,
                ledger,
                metrics,
            },
            &bus,
            &settings.bus,
            shutdown.clone(),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !ready.get() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "consumer not up in 15 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Consumer {
            settings,
            bus,
            shutdown,
            ready,
            task: Some(task),
            _outbox: outbox,
        }
    }

    /// Signals shutdown and waits for the consumer task to end.
    async fn stop(&mut self) {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("the consumer stops within its grace period")
            .unwrap();
        assert!(!self.ready.get());
    }

    async fn ready_messages(&self, url: &str) -> u32 {
        inspect_queue(url, &self.settings.bus.egress_queue)
            .await
            .message_count()
    }

    async fn publisher(&self, url: &str) -> EgressPublisher {
        EgressPublisher::connect(url, &self.settings.bus.exchange, &self.settings.bus.prefix).await
    }

    async fn status_tap(&self, url: &str) -> BusTap {
        BusTap::bind(
            url,
            &self.settings.bus.exchange,
            "internal.egress.status.v1",
        )
        .await
    }

    async fn cleanup(self, url: &str) {
        self.bus.close().await;
        delete_broker_objects(
            url,
            &self.settings.bus.exchange,
            &self.settings.bus.egress_queue,
        );
    }
}

/// Waits until `count` messages are ready in the queue (the broker updates counts lazily).
async fn wait_ready_messages(consumer: &Consumer, url: &str, count: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = consumer.ready_messages(url).await;
        if now == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} ready message(s) in the egress queue, found {now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_finishes_an_in_flight_send_acks_it_and_consumes_nothing_more() {
    let url = require_broker!();
    let fake = fake_twilio().await;
    fake.enqueue(
        Route::Messages,
        Reply::delayed(Duration::from_millis(1500), Reply::Success),
    );
    let mut consumer = Consumer::start(&url, &fake).await;
    let mut status = consumer.status_tap(&url).await;
    let publisher = consumer.publisher(&url).await;

    let in_flight = reply_to("+14155550180", "in flight at shutdown");
    publisher.publish(&in_flight).await;
    fake.wait_for_requests(Route::Messages, 1, Duration::from_secs(20))
        .await;
    consumer.stop().await;

    let id = in_flight["correlationId"].as_str().unwrap().to_owned();
    let sent = next_matching(&mut status, |s| s["correlationId"] == id.as_str()).await;
    assert_eq!(sent["status"], "sent");
    wait_ready_messages(&consumer, &url, 0).await;

    // Stopped consuming: a new event stays in the queue for another instance.
    publisher
        .publish(&reply_to("+14155550181", "after shutdown"))
        .await;
    wait_ready_messages(&consumer, &url, 1).await;
    assert_eq!(fake.requests_to(Route::Messages).len(), 1);
    assert_eq!(fake.created(Route::Messages).len(), 1);
    fake.assert_no_violations();
    consumer.cleanup(&url).await;
}

#[tokio::test]
async fn shutdown_requeues_a_send_that_waits_to_retry() {
    let url = require_broker!();
    let fake = fake_twilio().await;
    // Twilio says: come back in 60 s. Shutdown must not wait for that.
    fake.enqueue(Route::Messages, Reply::too_many_requests(Some(60)));
    let mut consumer = Consumer::start(&url, &fake).await;
    let publisher = consumer.publisher(&url).await;
    publisher
        .publish(&reply_to("+14155550182", "retry me later"))
        .await;
    fake.wait_for_requests(Route::Messages, 1, Duration::from_secs(20))
        .await;
    consumer.stop().await;

    wait_ready_messages(&consumer, &url, 1).await;
    assert_eq!(fake.requests_to(Route::Messages).len(), 1);
    assert_eq!(fake.created(Route::Messages).len(), 0);
    consumer.cleanup(&url).await;
}
