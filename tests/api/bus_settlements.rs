//! Settling deliveries out of order against a real RabbitMQ: acks that wait behind an earlier
//! delivery go out together with it or on their own shortly after, never twice, and never so
//! that the broker refuses one (which would close the channel and deliver everything again).

use std::{collections::BTreeSet, time::Duration};

use ingress_egress::{
    bus::{
        delivery::{Received, SubscriptionProbe, SubscriptionSpec},
        Bus, Subscription,
    },
    configuration::{QueueType, Settings},
    readiness::ReadyFlag,
};
use lapin::{options::BasicPublishOptions, BasicProperties, Connection, ConnectionProperties};
use prometheus::IntGauge;

use crate::{
    helpers::{base_vars, delete_broker_objects, inspect_queue},
    require_broker,
};

const TOPIC: &str = "test.settlements.v1";
const PREFETCH: u16 = 16;

struct Fixture {
    url: String,
    settings: Settings,
    bus: Bus,
    subscription: Subscription,
}

impl Fixture {
    async fn start(url: &str) -> Fixture {
        let settings = Settings::from_vars(base_vars(Some(url))).unwrap();
        let bus = Bus::from_settings(&settings.bus);
        let spec = SubscriptionSpec {
            queue: settings.bus.egress_queue.clone(),
            queue_type: QueueType::Classic,
            topics: vec![TOPIC.to_owned()],
            prefetch: PREFETCH,
            consumer_tag: "settlements-test".to_owned(),
            single_active_consumer: false,
        };
        let probe = SubscriptionProbe {
            consuming: ReadyFlag::default(),
            queue_depth: IntGauge::new("depth", "queue depth").unwrap(),
            active: None,
            consumers: None,
            stopping: None,
        };
        let subscription = bus.subscribe(spec, probe.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !probe.consuming.get() {
            assert!(tokio::time::Instant::now() < deadline, "never consuming");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Fixture {
            url: url.to_owned(),
            settings,
            bus,
            subscription,
        }
    }

    /// Publishes messages numbered `numbers` (the body is the number).
    async fn publish(&self, numbers: impl IntoIterator<Item = u32>) {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        for number in numbers {
            channel
                .basic_publish(
                    self.settings.bus.exchange.as_str().into(),
                    format!("{}{TOPIC}", self.settings.bus.prefix)
                        .as_str()
                        .into(),
                    BasicPublishOptions::default(),
                    number.to_string().as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .unwrap();
        }
        let _ = connection.close(200, "done".into()).await;
    }

    async fn receive(&mut self, count: usize) -> Vec<(u32, Received)> {
        let mut received = Vec::new();
        for _ in 0..count {
            let delivery = tokio::time::timeout(Duration::from_secs(10), self.subscription.next())
                .await
                .expect("a delivery within 10 s")
                .expect("subscription open");
            let number = String::from_utf8_lossy(&delivery.body).parse().unwrap();
            received.push((number, delivery));
        }
        received
    }

    /// Nothing more arrives for a while (no redelivery after a channel failure either).
    async fn assert_quiet(&mut self) {
        if let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(700), self.subscription.next()).await
        {
            panic!(
                "unexpected delivery {:?} (redelivered: {})",
                String::from_utf8_lossy(&delivery.body),
                delivery.redelivered
            );
        }
    }

    async fn ready_messages(&self) -> u32 {
        ready_messages(&self.url, &self.settings.bus.egress_queue).await
    }

    async fn finish(mut self) {
        self.subscription.stop().await;
        self.subscription.close().await;
        self.bus.close().await;
        delete_broker_objects(
            &self.url,
            &self.settings.bus.exchange,
            &self.settings.bus.egress_queue,
        );
    }
}

async fn ready_messages(url: &str, queue: &str) -> u32 {
    inspect_queue(url, queue).await.message_count()
}

fn by_number(received: Vec<(u32, Received)>) -> std::collections::BTreeMap<u32, Received> {
    received.into_iter().collect()
}

#[tokio::test]
async fn acks_in_any_order_with_requeues_and_rejects_settle_each_delivery_once() {
    let url = require_broker!();
    let mut fixture = Fixture::start(&url).await;
    fixture.publish(1..=13).await;
    let mut deliveries = by_number(fixture.receive(13).await);
    assert_eq!(
        deliveries.keys().copied().collect::<Vec<_>>(),
        (1..=13).collect::<Vec<_>>()
    );
    // Held while the others are settled: had the broker refused a settlement and closed the
    // channel, it would come again and its ack would fail.
    let held = deliveries.remove(&13).unwrap();

    // Out of order, with a requeue and a reject among the acks, and the first delivery last.
    for number in [2, 4, 3, 6, 8, 9, 5, 10, 7, 12, 11, 1] {
        let delivery = deliveries.remove(&number).unwrap();
        let settled = match number {
            3 => delivery.handle.requeue(),
            7 => delivery.handle.reject(),
            _ => delivery.handle.ack(),
        };
        settled.unwrap();
        // A second settlement of a delivery (waiting, or already on the wire) is not passed on:
        // the broker would refuse it and close the channel.
        if number == 4 || number == 1 {
            delivery.handle.ack().unwrap();
        }
    }

    // Past the next flush of waiting acks, the channel is still open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.handle.ack().unwrap();

    // The requeued one comes back, once; nothing else does.
    let again = fixture.receive(1).await;
    assert_eq!(again[0].0, 3);
    assert!(again[0].1.redelivered);
    again[0].1.handle.ack().unwrap();
    fixture.assert_quiet().await;
    assert_eq!(fixture.ready_messages().await, 0);
    fixture.finish().await;
}

#[tokio::test]
async fn acks_waiting_behind_a_delivery_in_progress_free_their_prefetch_places_soon() {
    let url = require_broker!();
    let mut fixture = Fixture::start(&url).await;
    let total = u32::from(PREFETCH) + 3;
    fixture.publish(1..=total).await;
    let mut deliveries = by_number(fixture.receive(usize::from(PREFETCH)).await);

    // The first delivery stays in progress; three acks wait behind it (fewer than would be sent
    // at once). The broker can only deliver the last three when those acks reached it.
    for number in [2, 3, 4] {
        deliveries.remove(&number).unwrap().handle.ack().unwrap();
    }
    let more = fixture.receive(3).await;
    let numbers: BTreeSet<u32> = more.iter().map(|(number, _)| *number).collect();
    assert_eq!(numbers, (total - 2..=total).collect());
    deliveries.extend(more);

    // The one in progress ends; everything is settled exactly once.
    for (_, delivery) in deliveries {
        delivery.handle.ack().unwrap();
    }
    fixture.assert_quiet().await;
    assert_eq!(fixture.ready_messages().await, 0);
    fixture.finish().await;
}

#[tokio::test]
async fn after_stop_an_ack_behind_a_delivery_in_progress_is_not_held_back() {
    let url = require_broker!();
    let mut fixture = Fixture::start(&url).await;
    fixture.publish(1..=2).await;
    let mut deliveries = by_number(fixture.receive(2).await);
    fixture.subscription.stop().await;
    // With the consumer stopped, the ack of 2 must go out although 1 is still in progress
    // (and stays so): closing the channel would otherwise return 2 to the queue with 1.
    deliveries.remove(&2).unwrap().handle.ack().unwrap();
    let Fixture {
        url,
        settings,
        bus,
        subscription,
    } = fixture;
    subscription.close().await;
    drop(deliveries);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = ready_messages(&url, &settings.bus.egress_queue).await;
        if ready == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected only the unsettled message back in the queue, found {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bus.close().await;
    delete_broker_objects(&url, &settings.bus.exchange, &settings.bus.egress_queue);
}
