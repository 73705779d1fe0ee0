//! The embedded in-memory bus, used when `AMQP_URL` is unset so the service runs with no
//! broker. It keeps the most recent messages for inspection and fans every message out to
//! subscribers (the egress loop subscribes to its own topics). Nothing survives a restart.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

use super::{routing_key, BusMessage, PublishError};

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
