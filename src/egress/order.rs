//! Per-recipient ordering: events for one recipient are processed one after another, in the
//! order they were consumed; events for different recipients run concurrently.
//!
//! [`Sequencer::enqueue`] is called synchronously by the consumer loop, in delivery order, and
//! hands out a [`Turn`]. A turn waits for the previous turn of the same key to be dropped. Each
//! turn holds a oneshot receiver of its predecessor, so the map only keeps the newest turn per
//! key and forgets keys that went idle.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::oneshot;

#[derive(Default)]
pub struct Sequencer {
    tails: Mutex<HashMap<String, (u64, oneshot::Receiver<()>)>>,
    next_id: AtomicU64,
}

/// A place in one key's queue. Dropping it lets the next turn of the key proceed.
pub struct Turn {
    sequencer: Arc<Sequencer>,
    key: String,
    id: u64,
    previous: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl Sequencer {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Queues a turn for `key` behind every turn already queued for it.
    pub fn enqueue(self: &Arc<Self>, key: &str) -> Turn {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, next_waits_on) = oneshot::channel();
        let previous = self
            .tails
            .lock()
            .expect("poisoned")
            .insert(key.to_owned(), (id, next_waits_on))
            .map(|(_, receiver)| receiver);
        Turn {
            sequencer: self.clone(),
            key: key.to_owned(),
            id,
            previous,
            done: Some(done),
        }
    }

    /// Keys with a queued or running turn.
    #[cfg(test)]
    fn active_keys(&self) -> usize {
        self.tails.lock().expect("poisoned").len()
    }
}

impl Turn {
    /// Returns once every earlier turn of the same key has finished (or was dropped).
    pub async fn wait(&mut self) {
        if let Some(previous) = self.previous.take() {
            let _ = previous.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        let mut tails = self.sequencer.tails.lock().expect("poisoned");
        if tails.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            tails.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn ready(turn: &mut Turn) -> bool {
        tokio::time::timeout(Duration::from_millis(20), turn.wait())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn same_key_waits_other_keys_do_not() {
        let sequencer = Sequencer::new();
        let mut a1 = sequencer.enqueue("A");
        let mut a2 = sequencer.enqueue("A");
        let mut a3 = sequencer.enqueue("A");
        let mut b1 = sequencer.enqueue("B");
        assert!(ready(&mut a1).await);
        assert!(ready(&mut b1).await);
        assert!(!ready(&mut a2).await, "a2 must wait for a1");
        drop(a1);
        assert!(ready(&mut a2).await);
        assert!(!ready(&mut a3).await, "a3 must wait for a2");
        drop(a2);
        assert!(ready(&mut a3).await);
        drop(a3);
        drop(b1);
        assert_eq!(sequencer.active_keys(), 0, "idle keys are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_tasks_finish_in_enqueue_order_per_key() {
        let sequencer = Sequencer::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for (i, key) in ["A", "B", "A", "B", "A"].into_iter().enumerate() {
            let mut turn = sequencer.enqueue(key);
            let log = log.clone();
            // Earlier events take longer, so without sequencing they would finish last.
            let work = Duration::from_millis(100 - 10 * i as u64);
            handles.push(tokio::spawn(async move {
                turn.wait().await;
                tokio::time::sleep(work).await;
                log.lock().unwrap().push(format!("{key}{i}"));
            }));
        }
        for handle in handles {
            handle.await.unwrap();
        }
        let log = log.lock().unwrap().clone();
        let a: Vec<_> = log.iter().filter(|e| e.starts_with('A')).cloned().collect();
        let b: Vec<_> = log.iter().filter(|e| e.starts_with('B')).cloned().collect();
        assert_eq!(a, vec!["A0", "A2", "A4"]);
        assert_eq!(b, vec!["B1", "B3"]);
        // B1 ran alongside A0 rather than after it.
        assert_eq!(log[0], "B1");
    }
}
