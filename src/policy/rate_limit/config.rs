//! What a rate limit is: a sustained rate, a burst, what it is counted against, and a
//! bound on the keys it tracks; validated once.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use governor::Quota;
use http::HeaderName;

use super::shared::{SharedLimitConfig, SharedLimitConfigError};

/// Keys a keyed limiter tracks unless configured otherwise (a few MiB of state).
pub const DEFAULT_MAX_KEYS: NonZeroUsize = NonZeroUsize::new(100_000).unwrap();

/// A sustained rate: `count` calls every `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Calls admitted per period.
    pub count: NonZeroU32,
    /// The period.
    pub per: Duration,
}

/// What a limit is counted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// One bucket for every call to the service.
    Global,
    /// One bucket per client IP (from [`CallInfo`](crate::core::call::CallInfo); the port is
    /// ignored). IPv4-mapped IPv6 addresses count as their IPv4 address, and an IPv6
    /// client counts by its /64 prefix, since one host commonly holds a whole /64.
    ClientIp,
    /// One bucket per value of this header (its first value). Requests without the
    /// header share one "missing" bucket. A client chooses its header, so this is a
    /// fairness tool between cooperating callers, not a defence.
    Header(HeaderName),
}

/// A validated rate limit.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub(super) rate: Rate,
    /// The GCRA quota: one call every `per / count`, bursts of up to `burst`.
    pub(super) quota: Quota,
    pub(super) key: RateLimitKey,
    /// Upper bound on the keys a keyed limiter tracks at once.
    pub(super) max_keys: NonZeroUsize,
    /// Where the buckets are shared among replicas; `None` for a per-replica limit.
    pub(super) shared: Option<SharedLimitConfig>,
}

/// Why a rate limit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitConfigError {
    /// The rate's period is zero.
    #[error("rate limit period must be non-zero")]
    ZeroPeriod,
    /// The rate asks for more than one call per nanosecond.
    #[error("rate limit of {count} per {per:?} is finer than one call per nanosecond")]
    TooFine {
        /// Calls per period.
        count: NonZeroU32,
        /// The period.
        per: Duration,
    },
    /// A full burst would take longer to refill than the limiter can count.
    #[error(
        "rate limit burst of {burst} at {count} per {per:?} takes more than 584 years to refill"
    )]
    TooSlow {
        /// Calls per period.
        count: NonZeroU32,
        /// The period.
        per: Duration,
        /// The burst size.
        burst: NonZeroU32,
    },
}

impl RateLimitConfig {
    /// A limit of `rate` sustained with bursts of up to `burst` calls, counted by `key`.
    pub fn try_new(
        rate: Rate,
        burst: NonZeroU32,
        key: RateLimitKey,
    ) -> Result<Self, RateLimitConfigError> {
        let Rate { count, per } = rate;
        if per.is_zero() {
            return Err(RateLimitConfigError::ZeroPeriod);
        }
        let interval = per / count.get();
        let Some(quota) = Quota::with_period(interval) else {
            return Err(RateLimitConfigError::TooFine { count, per });
        };
        if interval.as_nanos() * u128::from(burst.get()) > u128::from(u64::MAX) {
            return Err(RateLimitConfigError::TooSlow { count, per, burst });
        }
        Ok(Self {
            rate,
            quota: quota.allow_burst(burst),
            key,
            max_keys: DEFAULT_MAX_KEYS,
            shared: None,
        })
    }

    /// Shares the limit's buckets among replicas through Redis; settles the batch
    /// against the rate and the burst.
    pub fn share(mut self, mut shared: SharedLimitConfig) -> Result<Self, SharedLimitConfigError> {
        let per_second = self.rate.count.get() as f64 / self.rate.per.as_secs_f64();
        shared.settle_batch(per_second, self.burst())?;
        self.shared = Some(shared);
        Ok(self)
    }

    /// Where the buckets are shared, if they are.
    pub fn shared(&self) -> Option<&SharedLimitConfig> {
        self.shared.as_ref()
    }

    /// Caps the keys a keyed limiter tracks (default [`DEFAULT_MAX_KEYS`]).
    pub fn with_max_keys(mut self, max_keys: NonZeroUsize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The sustained rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// What the limit is counted against.
    pub fn key(&self) -> &RateLimitKey {
        &self.key
    }

    /// The burst size.
    pub fn burst(&self) -> NonZeroU32 {
        self.quota.burst_size()
    }

    /// The time one call's token takes to come back.
    pub fn replenish_interval(&self) -> Duration {
        self.quota.replenish_interval()
    }

    /// Upper bound on the keys a keyed limiter tracks at once.
    pub fn max_keys(&self) -> NonZeroUsize {
        self.max_keys
    }
}
