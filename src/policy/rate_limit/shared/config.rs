//! What a shared limit needs beyond a local one: the Redis holding its buckets, the
//! deadline of one decision, what to do without Redis, and the batch a replica takes.

use std::num::NonZeroU32;
use std::time::Duration;

/// The longest deadline a decision may have: a limit that waits longer on Redis than
/// this slows every call more than it protects anything.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(1);

/// The largest default batch (the default is 1% of a second's budget).
const MAX_DEFAULT_BATCH: u32 = 10;

/// What a shared limit does when Redis fails or misses the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Admit the call.
    Open,
    /// Refuse the call, as if over the limit.
    Closed,
    /// Decide by this replica's own limit at the same rate.
    Local,
}

impl OnError {
    /// The word the config and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Local => "local",
        }
    }
}

/// A validated shared-limit setting (the bucket itself is the [`RateLimitConfig`]'s).
///
/// [`RateLimitConfig`]: super::super::RateLimitConfig
#[derive(Debug, Clone)]
pub struct SharedLimitConfig {
    pub(in crate::policy::rate_limit) client: redis::Client,
    /// Where the buckets are, for logs (no credentials).
    pub(in crate::policy::rate_limit) peer: String,
    pub(in crate::policy::rate_limit) timeout: Duration,
    pub(in crate::policy::rate_limit) on_error: OnError,
    /// `None` until [`RateLimitConfig::share`](super::super::RateLimitConfig::share)
    /// settles it against the rate and burst.
    pub(in crate::policy::rate_limit) batch: Option<NonZeroU32>,
}

/// Why a shared-limit setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedLimitConfigError {
    /// The URL does not name a Redis.
    #[error("invalid Redis URL: {0}")]
    Url(String),
    /// A zero deadline would never ask Redis.
    #[error("timeout must be non-zero")]
    ZeroTimeout,
    /// A deadline longer than [`MAX_TIMEOUT`].
    #[error("timeout of {0:?} is above the maximum of 1s")]
    TimeoutTooLong(Duration),
    /// A batch larger than the bucket can ever hold.
    #[error("batch of {batch} is above the burst of {burst}")]
    BatchAboveBurst {
        /// The batch asked for.
        batch: NonZeroU32,
        /// The limit's burst.
        burst: NonZeroU32,
    },
}

impl SharedLimitConfig {
    /// Buckets in the Redis at `url`, each decision waiting at most `timeout`.
    pub fn try_new(
        url: &str,
        timeout: Duration,
        on_error: OnError,
        batch: Option<NonZeroU32>,
    ) -> Result<Self, SharedLimitConfigError> {
        if timeout.is_zero() {
            return Err(SharedLimitConfigError::ZeroTimeout);
        }
        if timeout > MAX_TIMEOUT {
            return Err(SharedLimitConfigError::TimeoutTooLong(timeout));
        }
        let client = redis::Client::open(url)
            .map_err(|error| SharedLimitConfigError::Url(error.to_string()))?;
        let info = client.get_connection_info();
        let peer = info.addr().to_string();
        Ok(Self {
            client,
            peer,
            timeout,
            on_error,
            batch,
        })
    }

    /// The batch for a bucket of `burst` filling at `per_second` tokens a second: the
    /// one configured (at most the burst), else 1% of a second's budget, 1 to 10.
    pub(in crate::policy::rate_limit) fn settle_batch(
        &mut self,
        per_second: f64,
        burst: NonZeroU32,
    ) -> Result<(), SharedLimitConfigError> {
        let batch = match self.batch {
            Some(batch) if batch > burst => {
                return Err(SharedLimitConfigError::BatchAboveBurst { batch, burst })
            }
            Some(batch) => batch,
            None => {
                let default = (per_second / 100.0)
                    .floor()
                    .clamp(1.0, MAX_DEFAULT_BATCH as f64);
                NonZeroU32::new((default as u32).min(burst.get())).unwrap_or(NonZeroU32::MIN)
            }
        };
        self.batch = Some(batch);
        Ok(())
    }

    /// Tokens taken from Redis per round trip.
    pub fn batch(&self) -> NonZeroU32 {
        self.batch.unwrap_or(NonZeroU32::MIN)
    }

    /// The deadline of one decision.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What happens without Redis.
    pub fn on_error(&self) -> OnError {
        self.on_error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn settled(
        per_second: f64,
        burst: u32,
        batch: Option<u32>,
    ) -> Result<u32, SharedLimitConfigError> {
        let mut config = SharedLimitConfig::try_new(
            "redis://127.0.0.1:6379",
            Duration::from_millis(5),
            OnError::Local,
            batch.map(nz),
        )
        .unwrap();
        config.settle_batch(per_second, nz(burst))?;
        Ok(config.batch().get())
    }

    #[test]
    fn the_default_batch_is_a_hundredth_of_a_second_within_one_to_ten_and_the_burst() {
        assert_eq!(settled(50.0, 50, None), Ok(1));
        assert_eq!(settled(500.0, 500, None), Ok(5));
        assert_eq!(settled(100_000.0, 100_000, None), Ok(10));
        assert_eq!(settled(100_000.0, 3, None), Ok(3));
        assert_eq!(settled(50.0, 50, Some(7)), Ok(7));
        assert_eq!(
            settled(50.0, 5, Some(6)),
            Err(SharedLimitConfigError::BatchAboveBurst {
                batch: nz(6),
                burst: nz(5)
            })
        );
    }

    #[test]
    fn nonsense_is_refused() {
        let try_new = |url, ms| {
            SharedLimitConfig::try_new(url, Duration::from_millis(ms), OnError::Open, None).err()
        };
        assert_eq!(
            try_new("redis://cache", 0),
            Some(SharedLimitConfigError::ZeroTimeout)
        );
        assert!(matches!(
            try_new("redis://cache", 1001),
            Some(SharedLimitConfigError::TimeoutTooLong(_))
        ));
        assert!(matches!(
            try_new("http://cache", 5),
            Some(SharedLimitConfigError::Url(_))
        ));
    }
}
