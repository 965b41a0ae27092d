//! Exponential backoff: the one formula Shoal's retry loops share.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// Delays that double from `min` up to `max`: `min · 2^attempt`, capped at `max`, optionally
/// plus up to 25 % jitter so that many processes retrying the same thing spread out.
///
/// ```
/// use std::time::Duration;
/// use shoal_protocol::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(backoff.delay(0), Duration::from_millis(100));
/// assert_eq!(backoff.delay(2), Duration::from_millis(400));
/// assert_eq!(backoff.delay(9), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// Doubling from `min` up to `max`, without jitter.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            jitter: false,
        }
    }

    /// The same delays, each plus up to 25 % (random per call).
    pub const fn with_jitter(self) -> Self {
        Self {
            jitter: true,
            ..self
        }
    }

    /// The delay before retry `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        if !self.jitter {
            return base;
        }
        // A fresh `RandomState` has fresh keys: a cheap source of jitter without a dependency.
        let jitter = RandomState::new().hash_one(attempt) % 1000;
        base + base.mul_f64(jitter as f64 / 4000.0)
    }

    /// A counter of attempts over these delays, for loops that retry until something works.
    pub fn attempts(self) -> Attempts {
        Attempts {
            backoff: self,
            attempt: 0,
        }
    }
}

/// Successive delays of a [`Backoff`]; [`Attempts::reset`] starts over after a success.
#[derive(Debug, Clone)]
pub struct Attempts {
    backoff: Backoff,
    attempt: u32,
}

impl Attempts {
    /// The delay before the next retry (longer each time, up to the maximum).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Back to the shortest delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut attempts =
            Backoff::new(Duration::from_millis(50), Duration::from_secs(5)).attempts();
        let delays: Vec<u64> = (0..10)
            .map(|_| attempts.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        attempts.reset();
        assert_eq!(attempts.next_delay(), Duration::from_millis(50));
        // Huge attempt numbers neither overflow nor pass the cap.
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_adds_at_most_a_quarter() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_jitter();
        for attempt in 0..8 {
            let plain =
                Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).delay(attempt);
            let delay = b.delay(attempt);
            assert!(
                delay >= plain && delay <= plain + plain / 4,
                "{delay:?} vs {plain:?}"
            );
        }
    }
}
