//! How long retry waits before the next attempt.
//!
//! Exponential (`base × 2ⁿ` before the n-th retry, n from 0), capped at a maximum, with
//! proportional jitter so that clients failing together do not retry together.
//!
//! Not tower's `retry::backoff::ExponentialBackoff`: that one hands out only a sleep
//! future per step of a stateful session, never the wait itself nor its maximum, and
//! retry needs both before it sleeps (to check the wait against the call's deadline, and
//! to cap a server's `Retry-After` or pushback at the maximum); its jitter is also added
//! on top of the wait, where this one takes a share off it.
//!
//! Named `RetryBackoff`: discovery's `Backoff` (waits between attempts to reach a
//! registry, a stateful doubling without jitter) is another thing.

use std::time::Duration;

/// A rejected backoff configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid backoff: {0}")]
pub struct InvalidBackoff(&'static str);

/// Retry's exponential backoff, validated once at construction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBackoff {
    /// Delay before the first retry; non-zero.
    base: Duration,
    /// Cap on every delay, including delays a server asked for; `>= base`.
    max: Duration,
    /// Fraction of each delay that is randomised, in `[0, 1]`.
    jitter: f64,
}

impl RetryBackoff {
    /// A backoff from `base` doubling up to `max`.
    ///
    /// Jitter is proportional: a delay `d` becomes a uniform pick in
    /// `[d × (1 − jitter), d]`, so `jitter = 1` is "full jitter" and `jitter = 0` is exact.
    pub fn try_new(base: Duration, max: Duration, jitter: f64) -> Result<Self, InvalidBackoff> {
        if base.is_zero() {
            return Err(InvalidBackoff("base must be non-zero"));
        }
        if max < base {
            return Err(InvalidBackoff("maximum must be ≥ base"));
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(InvalidBackoff("jitter must be between 0 and 1"));
        }
        Ok(Self { base, max, jitter })
    }

    /// The delay before retry number `retry` (0 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let exact = self.exact(retry);
        if self.jitter == 0.0 {
            return exact;
        }
        exact.mul_f64(1.0 - self.jitter * fastrand::f64())
    }

    /// The cap on every delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// `base × 2^retry`, capped at `max`, without jitter.
    fn exact(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }
}

impl Default for RetryBackoff {
    /// 25 ms doubling to 1 s, half of each delay randomised.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_secs(1),
            jitter: 0.5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn sequence_doubles_and_caps_exactly_without_jitter() {
        let backoff = RetryBackoff::try_new(10 * MS, 100 * MS, 0.0).unwrap();
        let delays: Vec<_> = (0..6).map(|n| backoff.delay(n)).collect();
        assert_eq!(
            delays,
            [10 * MS, 20 * MS, 40 * MS, 80 * MS, 100 * MS, 100 * MS]
        );
        assert_eq!(backoff.delay(40), 100 * MS);
        assert_eq!(backoff.delay(u32::MAX), 100 * MS);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let backoff = RetryBackoff::try_new(100 * MS, 100 * MS, 0.25).unwrap();
        for _ in 0..1000 {
            let delay = backoff.delay(0);
            assert!(delay >= 75 * MS && delay <= 100 * MS, "{delay:?}");
        }
    }

    #[test]
    fn rejects_nonsense() {
        let err = |b, m, j| RetryBackoff::try_new(b, m, j).unwrap_err().to_string();
        assert_eq!(
            err(MS, MS / 2, 0.0),
            "invalid backoff: maximum must be ≥ base"
        );
        assert_eq!(
            err(Duration::ZERO, MS, 0.0),
            "invalid backoff: base must be non-zero"
        );
        assert!(err(MS, MS, 1.5).contains("jitter"));
        assert!(err(MS, MS, f64::NAN).contains("jitter"));
        assert!(RetryBackoff::try_new(MS, MS, 1.0).is_ok());
    }
}
