//! Exponential backoff with jitter, shared by broker reconnects and platform retries.

use std::time::Duration;

use rand::Rng;

/// Delays grow as `base * 2^attempt`, capped at `max`; each delay is drawn uniformly from
/// `[cap/2, cap]` ("equal jitter": never less than half the ceiling) so a fleet of instances
/// does not retry in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The ceiling for the given attempt number, without jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(20));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let low = ceiling / 2;
        if ceiling.is_zero() {
            return ceiling;
        }
        rand::rng().random_range(low..=ceiling)
    }

    /// The next delay, but never shorter than `floor`, a wait the other side asked for
    /// (`Retry-After`, a reconnect minimum). The floor is itself jittered upwards by up to 20 %
    /// so clients told the same number do not come back in lockstep.
    pub fn next_delay_at_least(&mut self, floor: Option<Duration>) -> Duration {
        let delay = self.next_delay();
        match floor {
            Some(floor) if floor > delay => {
                let spread = floor / 5;
                if spread.is_zero() {
                    floor
                } else {
                    floor + rand::rng().random_range(Duration::ZERO..=spread)
                }
            }
            _ => delay,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_cap_and_stay_in_the_jitter_window() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<_> = (0..6).map(|a| backoff.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        for attempt in 0..6 {
            let delay = backoff.next_delay();
            let ceiling = backoff.ceiling(attempt);
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{delay:?} vs {ceiling:?}"
            );
        }
        backoff.reset();
        assert_eq!(backoff.attempts(), 0);
    }

    #[test]
    fn a_floor_wins_over_a_shorter_delay() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(20));
        for _ in 0..20 {
            let delay = backoff.next_delay_at_least(Some(Duration::from_millis(500)));
            assert!(delay >= Duration::from_millis(500) && delay <= Duration::from_millis(600));
        }
        let delay = backoff.next_delay_at_least(Some(Duration::from_millis(1)));
        assert!(delay <= Duration::from_millis(20));
        assert!(backoff.next_delay_at_least(None) <= Duration::from_millis(20));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        for _ in 0..100 {
            assert!(backoff.next_delay() <= Duration::from_secs(120));
        }
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(120));
    }
}
