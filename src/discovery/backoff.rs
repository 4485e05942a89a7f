//! Exponential backoff between attempts to reach a registry.

use std::time::Duration;

use super::DiscoveryError;

/// Doubles the wait after each failure, from `min` up to `max`; a success resets it.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff from `min` to `max`; both must be non-zero and `min <= max`.
    pub fn try_new(min: Duration, max: Duration) -> Result<Self, String> {
        if min.is_zero() {
            return Err("minimum backoff must be non-zero".into());
        }
        if max < min {
            return Err(format!(
                "maximum backoff {max:?} is below the minimum {min:?}"
            ));
        }
        Ok(Self {
            min,
            max,
            next: min,
        })
    }

    /// Like [`try_new`](Self::try_new), with the error naming `registry`.
    pub(crate) fn for_registry(
        registry: &'static str,
        min: Duration,
        max: Duration,
    ) -> Result<Self, DiscoveryError> {
        Self::try_new(min, max).map_err(|message| DiscoveryError::new(registry, message))
    }

    /// The wait before the next attempt; each call doubles the one after, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Sleeps for [`next_delay`](Self::next_delay).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts over from `min` after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The longest wait.
    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::try_new(ms(100), ms(350)).unwrap();
        let delays: Vec<_> = (0..4).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(350), ms(350)]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), ms(100));
        assert!(Backoff::try_new(Duration::ZERO, ms(1)).is_err());
        assert!(Backoff::try_new(ms(2), ms(1)).is_err());
    }
}
