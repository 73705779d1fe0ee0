//! The consumer loop: takes deliveries from the bus subscription, hands each to the engine in
//! order and runs the returned work concurrently; on shutdown stops the subscription, lets
//! in-flight work finish or requeue itself (the engine requeues at every safe point once
//! shutdown is signalled), waits at most [`DRAIN_GRACE`], then closes the subscription, which
//! returns anything still unsettled to the queue.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::engine::Engine;
use crate::bus::Subscription;

/// How long in-flight sends may take to finish after shutdown starts (the service allows 8 s
/// for all background tasks).
pub const DRAIN_GRACE: Duration = Duration::from_secs(6);

/// Runs until `shutdown` (or until the subscription ends).
pub async fn run(engine: Arc<Engine>, mut subscription: Subscription, shutdown: CancellationToken) {
    let mut inflight = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            received = subscription.next() => match received {
                Some(received) => {
                    inflight.spawn(engine.accept(received));
                }
                None => break,
            },
        }
    }
    subscription.stop().await;
    drain(&mut inflight).await;
    subscription.close().await;
    tracing::info!("egress consumer stopped");
}

/// Waits for in-flight work, at most [`DRAIN_GRACE`]; aborts what is left (those deliveries
/// stay unsettled and return to the queue when the subscription closes).
async fn drain(inflight: &mut JoinSet<()>) {
    if inflight.is_empty() {
        return;
    }
    tracing::info!(
        inflight = inflight.len(),
        "waiting for in-flight egress sends"
    );
    let finished = tokio::time::timeout(DRAIN_GRACE, async {
        while inflight.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            left = inflight.len(),
            "in-flight egress sends did not finish in time; they return to the queue"
        );
        inflight.abort_all();
        while inflight.join_next().await.is_some() {}
    }
}
