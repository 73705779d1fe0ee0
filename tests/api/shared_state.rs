//! `REDIS_URL` set but Redis unreachable: the service starts, accepts webhooks (deduplicating
//! locally, marking what it publishes as possibly duplicated), and shows Redis down on
//! `/readyz`, in the metrics and in the snapshot, never with its password.

use std::time::Duration;

use ingress_egress::{bus::message::POSSIBLE_DUPLICATE_HEADER, envelope::topics};
use serde_json::Value;

use crate::{
    helpers::{header, spawn_app},
    outbox::{post_sms, signed_sms},
    replicas::free_port,
    require_broker,
};

const REDIS_PASSWORD: &str = "redis-password-secret-4e5f";

#[tokio::test]
async fn without_redis_webhooks_are_accepted_once_per_instance_and_marked() {
    let amqp = require_broker!();
    let url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", free_port());
    let app = spawn_app(Some(&amqp), &[("REDIS_URL", &url)]).await;
    let mut tap = app.tap(topics::INGRESS).await;

    let (id, body, signature) = signed_sms(7);
    for _ in 0..2 {
        assert_eq!(
            post_sms(&app.client, &app.address, &body, &signature).await,
            200
        );
    }
    let delivery = tap.next(Duration::from_secs(10)).await.expect("published");
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        id
    );
    assert_eq!(
        header(&delivery, POSSIBLE_DUPLICATE_HEADER).as_deref(),
        Some("Boolean(true)")
    );
    assert!(
        tap.next(Duration::from_secs(2)).await.is_none(),
        "the retry to the same instance is caught by its local window"
    );

    let readiness: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(readiness["redis"], "down", "{readiness}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("ingress_egress_redis_up 0"), "{metrics}");
    assert!(
        metrics.contains("ingress_egress_dedupe_fallbacks_total 2"),
        "{metrics}"
    );

    let snapshot = app.get("/_debug/twilio").await.text().await.unwrap();
    assert!(!snapshot.contains(REDIS_PASSWORD), "{snapshot}");
    let snapshot: Value = serde_json::from_str(&snapshot).unwrap();
    assert_eq!(snapshot["stateStore"]["kind"], "redis");
    assert_eq!(snapshot["stateStore"]["redis"]["up"], false);
    assert_eq!(snapshot["state"], "DEGRADED");
}
