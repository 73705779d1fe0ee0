//! Three processes of the real binary against one RabbitMQ and one Redis behave as one: a
//! webhook posted to all of them is published once; a recipient's replies leave in order
//! whichever instance sends them; one sender's combined rate stays at `TWILIO_MAX_SEND_RATE`;
//! the instance active on a partition can be killed mid-stream; Redis can go away and come
//! back mid-stream.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use ingress_egress::{
    bus::message::POSSIBLE_DUPLICATE_HEADER, egress::partition_of, envelope::topics,
};
use serde_json::Value;

use crate::{
    egress_support::{fake_twilio, reply_to, EgressPublisher},
    fake_twilio::{FakeTwilio, RecordedRequest, Route},
    helpers::{header, BusTap},
    outbox::{post_sms, signed_sms},
    replicas::{Cluster, PrivateRedis},
    require_broker, require_redis,
};

/// `(message_id, possibly duplicated)` of everything on `tap` until it is quiet for 3 s.
async fn published(tap: &mut BusTap) -> Vec<(String, bool)> {
    tap.collect_until_quiet(Duration::from_secs(3))
        .await
        .iter()
        .map(|delivery| {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string();
            (id, header(delivery, POSSIBLE_DUPLICATE_HEADER).is_some())
        })
        .collect()
}

/// Waits until the fake holds `count` created messages (at most `limit`), then for quiet.
async fn sent_messages(
    fake: &FakeTwilio,
    count: usize,
    limit: Duration,
    cluster: &Cluster,
) -> Vec<RecordedRequest> {
    let deadline = tokio::time::Instant::now() + limit;
    while fake.created(Route::Messages).len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {count} messages sent within {limit:?}\n{}",
            fake.created(Route::Messages).len(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    fake.assert_no_violations();
    fake.created(Route::Messages)
}

/// The bodies each recipient received, in the order Twilio received them.
fn bodies_by_recipient(sent: &[RecordedRequest]) -> BTreeMap<String, Vec<String>> {
    let mut by_recipient: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for request in sent {
        by_recipient
            .entry(request.param("To").unwrap().to_owned())
            .or_default()
            .push(request.param("Body").unwrap().to_owned());
    }
    by_recipient
}

/// Waits for the stream of [`publish_interleaved`] and checks it arrived once, in order.
async fn assert_stream_delivered(
    fake: &FakeTwilio,
    cluster: &Cluster,
    recipients: &[String],
    per_recipient: usize,
) {
    let count = recipients.len() * per_recipient;
    let sent = sent_messages(fake, count, Duration::from_secs(120), cluster).await;
    assert_in_order_once(&sent, recipients, per_recipient);
}

/// Every recipient got exactly `expected` bodies `0..expected`, once each, in order.
fn assert_in_order_once(sent: &[RecordedRequest], recipients: &[String], expected: usize) {
    let by_recipient = bodies_by_recipient(sent);
    for recipient in recipients {
        let got = by_recipient.get(recipient).cloned().unwrap_or_default();
        let want: Vec<String> = (0..expected).map(|n| format!("{recipient} #{n}")).collect();
        assert_eq!(got, want, "what {recipient} received, in order");
    }
    assert_eq!(
        sent.len(),
        recipients.len() * expected,
        "nothing sent twice"
    );
}

fn recipients(count: usize, base: u32) -> Vec<String> {
    (0..count)
        .map(|i| format!("+1415555{:04}", base as usize + i))
        .collect()
}

/// Sum of `egress_sends_total{outcome="sent"}` per replica.
async fn sent_per_replica(cluster: &Cluster) -> Vec<f64> {
    let mut counts = Vec::new();
    for replica in cluster.replicas.iter().filter(|r| r.is_running()) {
        counts.push(
            replica
                .metric(&cluster.client, "ingress_egress_egress_sends_total{connector=\"twilio\",error_code=\"\",outcome=\"sent\"}")
                .await,
        );
    }
    counts
}

#[tokio::test]
async fn the_same_signed_webhook_posted_to_every_instance_is_published_once() {
    let amqp = require_broker!();
    let redis = require_redis!();
    let fake = fake_twilio().await;
    let cluster = Cluster::start(&amqp, &redis, &fake, 3, 2, &[]).await;
    let mut tap = BusTap::bind(&amqp, &cluster.exchange, topics::INGRESS).await;

    let mut accepted = BTreeSet::new();
    for n in 0..10 {
        let (id, body, signature) = signed_sms(n);
        let posts = cluster
            .replicas
            .iter()
            .map(|replica| post_sms(&cluster.client, &replica.address, &body, &signature));
        let statuses = futures_util::future::join_all(posts).await;
        assert_eq!(statuses, vec![200, 200, 200], "every instance accepts it");
        accepted.insert(id);
    }
    let published = published(&mut tap).await;
    let ids: Vec<&String> = published.iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids.len(),
        10,
        "each webhook once, not once per instance: {ids:#?}"
    );
    assert_eq!(ids.into_iter().cloned().collect::<BTreeSet<_>>(), accepted);
    assert!(
        published.iter().all(|(_, marked)| !marked),
        "none possibly duplicated"
    );
}

#[tokio::test]
async fn a_recipients_replies_leave_in_publish_order_whichever_instance_sends_them() {
    let amqp = require_broker!();
    let redis = require_redis!();
    let fake = fake_twilio().await;
    let cluster = Cluster::start(&amqp, &redis, &fake, 3, 6, &[("AMQP_PREFETCH", "2")]).await;
    let publisher = EgressPublisher::connect(&amqp, &cluster.exchange, "").await;
    spread_partitions(&publisher, &fake, &cluster).await;
    let before = fake.created(Route::Messages).len();
    let sent_before = sent_per_replica(&cluster).await;
    let recipients = recipients(10, 1000);
    for n in 0..30 {
        for (r, recipient) in recipients.iter().enumerate() {
            let event = reply_to(recipient, &format!("{recipient} #{n}"));
            let body = serde_json::to_vec(&event).unwrap();
            // Some go to one instance's own routing key: they keep their place too.
            let topic = if (n + r) % 7 == 0 {
                let replica = &cluster.replicas[(n + r) % 3];
                format!("{}.{}", topics::EGRESS, replica.instance_id)
            } else {
                topics::EGRESS.to_owned()
            };
            publisher
                .publish_raw(
                    &topic,
                    &body,
                    Some(&format!("test:{}", uuid::Uuid::new_v4())),
                )
                .await;
        }
    }
    let sent = sent_messages(&fake, before + 300, Duration::from_secs(120), &cluster).await;
    assert_in_order_once(&sent[before..], &recipients, 30);
    let sent_after = sent_per_replica(&cluster).await;
    assert!(
        senders(&sent_before, &sent_after) >= 2,
        "one instance sent everything: {sent_before:?} → {sent_after:?}"
    );
}

/// Publishes `per_recipient` events to each of `recipients`, interleaved: `<recipient> #<n>`.
async fn publish_interleaved(
    publisher: &EgressPublisher,
    recipients: &[String],
    per_recipient: usize,
) {
    for n in 0..per_recipient {
        for recipient in recipients {
            publisher
                .publish(&reply_to(recipient, &format!("{recipient} #{n}")))
                .await;
        }
    }
}

/// Publishes `per_recipient` events to each of `recipients` (interleaved) and waits for them.
async fn run_stream(
    publisher: &EgressPublisher,
    fake: &FakeTwilio,
    cluster: &Cluster,
    recipients: &[String],
    per_recipient: usize,
) -> Vec<RecordedRequest> {
    let before = fake.created(Route::Messages).len();
    publish_interleaved(publisher, recipients, per_recipient).await;
    let total = before + recipients.len() * per_recipient;
    let sent = sent_messages(fake, total, Duration::from_secs(120), cluster).await;
    sent[before..].to_vec()
}

/// Sends warm-up traffic until at least two instances actively serve partitions: an instance
/// learns it is active on a partition from its deliveries, and hands over what exceeds its
/// share.
async fn spread_partitions(publisher: &EgressPublisher, fake: &FakeTwilio, cluster: &Cluster) {
    for round in 0..10 {
        run_stream(
            publisher,
            fake,
            cluster,
            &recipients(30, 2000 + 100 * round),
            1,
        )
        .await;
        let mut serving = 0;
        for replica in &cluster.replicas {
            serving += usize::from(!replica.active_partitions(&cluster.client).await.is_empty());
        }
        if serving >= 2 {
            return;
        }
    }
    panic!(
        "partitions never spread over the instances\n{}",
        cluster.logs()
    );
}

/// How many replicas sent something between two [`sent_per_replica`] samples.
fn senders(before: &[f64], after: &[f64]) -> usize {
    before.iter().zip(after).filter(|(b, a)| a > b).count()
}

#[tokio::test]
async fn one_senders_combined_rate_stays_at_the_limit_across_instances() {
    let amqp = require_broker!();
    let redis = require_redis!();
    let fake = fake_twilio().await;
    let cluster = Cluster::start(
        &amqp,
        &redis,
        &fake,
        3,
        6,
        // Few deliveries in flight per partition, so partitions move between instances.
        &[("TWILIO_MAX_SEND_RATE", "20"), ("AMQP_PREFETCH", "2")],
    )
    .await;
    let publisher = EgressPublisher::connect(&amqp, &cluster.exchange, "").await;

    spread_partitions(&publisher, &fake, &cluster).await;
    let sent_before = sent_per_replica(&cluster).await;
    let sent = run_stream(&publisher, &fake, &cluster, &recipients(100, 5000), 1).await;
    let sent_after = sent_per_replica(&cluster).await;
    assert!(
        senders(&sent_before, &sent_after) >= 2,
        "one instance sent everything: {sent_before:?} → {sent_after:?}"
    );

    let first = sent.first().unwrap().received_at;
    let last = sent.last().unwrap().received_at;
    let rate = (sent.len() - 1) as f64 / (last - first).as_secs_f64();
    assert!(
        (18.0..=22.0).contains(&rate),
        "{} sends from one sender over {:?}: {rate:.1}/s, limit 20/s",
        sent.len(),
        last - first
    );
}

#[tokio::test]
async fn killing_the_instance_active_on_a_partition_loses_and_repeats_nothing() {
    let amqp = require_broker!();
    let redis = require_redis!();
    let fake = fake_twilio().await;
    let partitions = 3;
    let mut cluster = Cluster::start(
        &amqp,
        &redis,
        &fake,
        3,
        partitions,
        &[("TWILIO_MAX_SEND_RATE", "20"), ("AMQP_PREFETCH", "4")],
    )
    .await;
    let publisher = EgressPublisher::connect(&amqp, &cluster.exchange, "").await;
    let recipients = recipients(6, 3000);
    let per_recipient = 12;
    publish_interleaved(&publisher, &recipients, per_recipient).await;
    // Mid-stream: the instance serving the first recipient's partition dies.
    fake.wait_for_requests(Route::Messages, 15, Duration::from_secs(30))
        .await;
    let probe = serde_json::to_vec(&reply_to(&recipients[0], "x")).unwrap();
    let partition = partition_of(&probe, usize::from(partitions)) as u64;
    let mut victim = None;
    // A partition being handed over is served by nobody until its next delivery: look again.
    for _ in 0..40 {
        for (index, replica) in cluster.replicas.iter().enumerate() {
            if replica
                .active_partitions(&cluster.client)
                .await
                .contains(&partition)
            {
                victim = Some(index);
            }
        }
        if victim.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victim = victim.expect("some instance serves the partition");
    cluster.replicas[victim].kill();
    let sent_at_kill = fake.created(Route::Messages).len();
    assert!(
        sent_at_kill < recipients.len() * per_recipient,
        "killed mid-stream"
    );

    assert_stream_delivered(&fake, &cluster, &recipients, per_recipient).await;
    let survivors: Vec<Vec<u64>> = {
        let mut all = Vec::new();
        for replica in cluster.replicas.iter().filter(|r| r.is_running()) {
            all.push(replica.active_partitions(&cluster.client).await);
        }
        all
    };
    assert!(
        survivors.iter().any(|active| active.contains(&partition)),
        "another instance took partition {partition} over: {survivors:?}"
    );
}

#[tokio::test]
async fn redis_stopped_and_restarted_mid_stream_refuses_no_webhook_and_repeats_no_sms() {
    let amqp = require_broker!();
    let _ = require_redis!();
    let mut redis = PrivateRedis::start().await;
    let fake = fake_twilio().await;
    let cluster = Cluster::start(
        &amqp,
        &redis.url(),
        &fake,
        3,
        2,
        &[("TWILIO_MAX_SEND_RATE", "20")],
    )
    .await;
    let mut tap = BusTap::bind(&amqp, &cluster.exchange, topics::INGRESS).await;
    let publisher = EgressPublisher::connect(&amqp, &cluster.exchange, "").await;
    let recipients = recipients(4, 4000);
    let per_recipient = 10;
    publish_interleaved(&publisher, &recipients, per_recipient).await;

    let mut accepted = BTreeSet::new();
    let post_round = |round: usize| {
        let cluster = &cluster;
        async move {
            let mut ids = Vec::new();
            for (i, replica) in cluster.replicas.iter().enumerate() {
                let (id, body, signature) = signed_sms(round * 10 + i);
                let status = post_sms(&cluster.client, &replica.address, &body, &signature).await;
                assert_eq!(status, 200, "webhook refused in round {round}");
                ids.push(id);
            }
            ids
        }
    };
    accepted.extend(post_round(0).await);
    fake.wait_for_requests(Route::Messages, 8, Duration::from_secs(30))
        .await;

    redis.stop();
    for round in 1..4 {
        accepted.extend(post_round(round).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let replica = &cluster.replicas[0];
    let readiness: Value = cluster
        .client
        .get(format!("{}/readyz", replica.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(readiness["redis"], "down", "{readiness}");
    assert_eq!(
        replica
            .metric(&cluster.client, "ingress_egress_redis_up")
            .await,
        0.0
    );

    redis.resume().await;
    for round in 4..6 {
        accepted.extend(post_round(round).await);
    }
    assert_stream_delivered(&fake, &cluster, &recipients, per_recipient).await;

    let published = published(&mut tap).await;
    let ids: BTreeSet<String> = published.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, accepted, "every accepted webhook was published");
    assert_eq!(published.len(), accepted.len(), "each once");
    assert!(
        published.iter().any(|(_, marked)| *marked),
        "those accepted without Redis are marked as possible duplicates"
    );
    let mut up = false;
    for _ in 0..50 {
        if replica
            .metric(&cluster.client, "ingress_egress_redis_up")
            .await
            == 1.0
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "redis_up back to 1");
}
