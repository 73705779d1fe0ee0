//! The embedded in-memory bus, used when `AMQP_URL` is unset so the service runs with no
//! broker. It keeps the most recent messages for inspection and fans every message out to
//! subscribers (the egress loop subscribes to its own topics). Nothing survives a restart.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

use super::{
    delivery::{
        DeliveryHandle, Received, Settle, SettleError, SubscriptionProbe, SubscriptionSpec,
    },
    message::{routing_key, BusMessage, PublishError},
};

/// How many recent messages are kept for `/_debug/events`.
const RECENT_CAPACITY: usize = 200;

#[derive(Clone)]
pub struct MemoryBus {
    prefix: String,
    recent: Arc<Mutex<VecDeque<BusMessage>>>,
    sender: broadcast::Sender<BusMessage>,
}

impl MemoryBus {
    pub fn new(prefix: String) -> Self {
        let (sender, _) = broadcast::channel(1024);
        Self {
            prefix,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT_CAPACITY))),
            sender,
        }
    }

    pub fn publish(&self, message: &BusMessage) -> Result<(), PublishError> {
        {
            let mut recent = self.recent.lock().expect("poisoned");
            if recent.len() == RECENT_CAPACITY {
                recent.pop_front();
            }
            recent.push_back(message.clone());
        }
        // No subscriber is not an error: like an exchange with no bound queue.
        let _ = self.sender.send(message.clone());
        Ok(())
    }

    /// The most recent messages, oldest first.
    pub fn recent(&self) -> Vec<BusMessage> {
        self.recent
            .lock()
            .expect("poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// Every message published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.sender.subscribe()
    }

    /// The routing key a message is published under, as on RabbitMQ.
    pub fn routing_key(&self, message: &BusMessage) -> String {
        routing_key(&self.prefix, &message.topic)
    }
}

/// A consumer of the embedded bus: the fan-out, filtered to the subscribed topics. Deliveries
/// need no acknowledgement and cannot be requeued (nothing is kept for a redelivery).
pub struct MemorySubscription {
    topics: Vec<String>,
    receiver: Option<broadcast::Receiver<BusMessage>>,
}

impl MemorySubscription {
    pub fn start(bus: &MemoryBus, spec: SubscriptionSpec, probe: SubscriptionProbe) -> Self {
        probe.consuming.set(true);
        Self {
            topics: spec.topics,
            receiver: Some(bus.subscribe()),
        }
    }

    pub async fn next(&mut self) -> Option<Received> {
        let receiver = self.receiver.as_mut()?;
        loop {
            match receiver.recv().await {
                Ok(message) if self.topics.contains(&message.topic) => {
                    return Some(Received {
                        body: message.body.into_bytes(),
                        message_id: Some(message.message_id),
                        timestamp: Some(message.timestamp),
                        trace_parent: message.trace_parent,
                        redelivered: false,
                        handle: DeliveryHandle::new(MemorySettle),
                    })
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::error!(missed, "embedded bus overflowed; messages were lost");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    pub fn stop(&mut self) {
        self.receiver = None;
    }
}

/// Settles a delivery of the embedded bus (nothing to settle; requeueing is impossible).
pub(crate) struct MemorySettle;

impl Settle for MemorySettle {
    fn ack(&self) -> Result<(), SettleError> {
        Ok(())
    }

    fn requeue(&self) -> Result<(), SettleError> {
        Err(SettleError::Unsupported("requeue"))
    }

    fn reject(&self) -> Result<(), SettleError> {
        Ok(())
    }
}
