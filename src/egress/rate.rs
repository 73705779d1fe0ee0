//! Per-sender token bucket (a sink's `max_send_rate` messages per second per sender).
//!
//! A GCRA-style limiter: each sender has a "theoretical arrival time"; [`RateLimiter::acquire`]
//! reserves the next free slot and sleeps until it, so callers for one sender leave evenly spaced
//! in the order they asked, and callers for other senders are not delayed at all. Uses tokio's
//! clock, so tests run it under a paused clock.
//!
//! With shared [`RateSlots`] (Redis) the same GCRA runs in the store, so every instance draws
//! from one schedule per sender and N instances together keep the rate.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::state::{RateSlots, StoreError};

/// Buckets idle this long are forgotten once the map grows past [`MAX_IDLE_BUCKETS`].
const MAX_IDLE_BUCKETS: usize = 1024;

pub struct RateLimiter {
    interval: Duration,
    /// How far ahead of schedule a sender may run (burst - 1 intervals).
    tolerance: Duration,
    senders: Mutex<HashMap<String, Instant>>,
    /// Slots shared with other instances, and the namespace of this limiter's senders there.
    shared: Option<(Arc<dyn RateSlots>, String)>,
}

impl RateLimiter {
    /// `per_second` sends per sender, allowing bursts of `burst` (at least 1).
    pub fn new(per_second: f64, burst: u32) -> Self {
        let per_second = if per_second.is_finite() && per_second > 0.0 {
            per_second
        } else {
            1.0
        };
        let interval = Duration::from_secs_f64(1.0 / per_second);
        Self {
            interval,
            tolerance: interval.saturating_mul(burst.max(1) - 1),
            senders: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Draws slots from `slots` (under `namespace`) instead of this process's schedule.
    pub fn shared(mut self, slots: Arc<dyn RateSlots>, namespace: &str) -> Self {
        self.shared = Some((slots, namespace.to_owned()));
        self
    }

    /// Reserves the next slot for `sender` and returns when it has come. Fails, without
    /// waiting, when the shared slots cannot be reserved.
    pub async fn acquire(&self, sender: &str) -> Result<(), StoreError> {
        match &self.shared {
            Some((slots, namespace)) => {
                let key = format!("{namespace}|{sender}");
                let wait = slots.reserve(&key, self.interval, self.tolerance).await?;
                tokio::time::sleep(wait).await;
            }
            None => {
                let slot = self.reserve(sender);
                if slot > Instant::now() {
                    tokio::time::sleep_until(slot).await;
                }
            }
        }
        Ok(())
    }

    /// Reserves the next slot for `sender` without waiting; returns when it starts.
    pub fn reserve(&self, sender: &str) -> Instant {
        let now = Instant::now();
        let mut senders = self.senders.lock().expect("poisoned");
        if senders.len() > MAX_IDLE_BUCKETS {
            senders.retain(|_, tat| *tat > now);
        }
        let tat = senders.get(sender).copied().unwrap_or(now).max(now);
        let slot = tat
            .checked_sub(self.tolerance)
            .map_or(now, |earliest| earliest.max(now));
        senders.insert(sender.to_owned(), tat + self.interval);
        slot
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_sender_is_spaced_by_the_rate() {
        let limiter = RateLimiter::new(2.0, 1);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            limiter.acquire("+15005550006").await.unwrap();
            at.push(Instant::now() - start);
        }
        let expected: Vec<Duration> = (0..5).map(|i| Duration::from_millis(500 * i)).collect();
        assert_eq!(at, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn senders_do_not_wait_for_each_other() {
        let limiter = Arc::new(RateLimiter::new(1.0, 1));
        let start = Instant::now();
        limiter.acquire("A").await.unwrap();
        limiter.acquire("A").await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        // B was never used: no wait, while A's next slot is a second away.
        limiter.acquire("B").await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(1));

        // Concurrent callers on one sender leave one interval apart, in order.
        let start = Instant::now();
        let mut handles = Vec::new();
        for i in 0..4u64 {
            let limiter = limiter.clone();
            handles.push(tokio::spawn(async move {
                limiter.acquire("C").await.unwrap();
                (i, Instant::now() - start)
            }));
            tokio::task::yield_now().await;
        }
        let mut done = Vec::new();
        for handle in handles {
            done.push(handle.await.unwrap());
        }
        assert_eq!(
            done,
            (0..4)
                .map(|i| (i, Duration::from_secs(i)))
                .collect::<Vec<_>>()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_then_steady_rate_and_idle_time_refills() {
        let limiter = RateLimiter::new(10.0, 3);
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire("S").await.unwrap();
        }
        assert_eq!(Instant::now() - start, Duration::ZERO, "burst of 3 is free");
        limiter.acquire("S").await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(100));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle = Instant::now();
        for _ in 0..3 {
            limiter.acquire("S").await.unwrap();
        }
        assert_eq!(
            Instant::now() - idle,
            Duration::ZERO,
            "refilled after idling"
        );
    }
}
