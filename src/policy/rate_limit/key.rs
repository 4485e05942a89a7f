//! Keyed limits: what a request is counted by (its client IP, a header value), and a
//! key table bounded so that hostile keys cannot grow memory without end.

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::RateLimiter;
use http::{HeaderName, Request};

use super::config::RateLimitConfig;
use crate::core::body::ProxyBody;
use crate::core::call::CallInfo;

/// How often, at most, a full key table is swept for keys whose buckets have refilled.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The key of one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    /// A client IP (an IPv6 one masked to its /64).
    Ip(IpAddr),
    /// A digest of a header value: fixed-size state however long the value, and
    /// seeded per layer so that clients cannot aim for collisions.
    Header(u64),
    /// No header. (Also a request with no [`CallInfo`], which the proxy puts on every
    /// call.)
    Missing,
}

/// How a keyed limiter derives a request's key.
pub(super) enum KeyBy {
    ClientIp,
    Header {
        name: HeaderName,
        digest: RandomState,
    },
}

impl KeyBy {
    fn key_of(&self, request: &Request<ProxyBody>) -> BucketKey {
        match self {
            Self::ClientIp => request
                .extensions()
                .get::<CallInfo>()
                .map_or(BucketKey::Missing, |call| {
                    BucketKey::Ip(client_ip_key(call.client.ip()))
                }),
            Self::Header { name, digest } => match request.headers().get(name) {
                Some(value) => BucketKey::Header(digest.hash_one(value.as_bytes())),
                None => BucketKey::Missing,
            },
        }
    }
}

/// The address a client is counted by: IPv4 as is, IPv6 by its /64 prefix.
pub(super) fn client_ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
    }
}

type KeyedGovernor<C> =
    RateLimiter<BucketKey, BoundedKeys, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A limiter with one bucket per key and a bounded key table.
pub(super) struct KeyedLimiter<C: Clock> {
    by: KeyBy,
    limiter: KeyedGovernor<C>,
    /// Set by the table when a new key found it full; cleared by a sweep that made room.
    full: Arc<AtomicBool>,
    max_keys: usize,
    /// Clock reading the limiter started at; sweep times are measured from it.
    start: C::Instant,
    /// Nanoseconds after `start` of the last sweep; the CAS on it elects one sweeper.
    last_sweep: AtomicU64,
    service: Arc<str>,
}

impl<C: Clock> KeyedLimiter<C> {
    pub(super) fn new(by: KeyBy, config: &RateLimitConfig, clock: C, service: Arc<str>) -> Self {
        let full = Arc::new(AtomicBool::new(false));
        let keys = BoundedKeys {
            keys: DashMapStateStore::default(),
            overflow: InMemoryState::default(),
            max_keys: config.max_keys.get(),
            full: full.clone(),
            service: service.clone(),
        };
        let start = clock.now();
        Self {
            by,
            limiter: RateLimiter::new(config.quota, keys, clock),
            full,
            max_keys: config.max_keys.get(),
            start,
            last_sweep: AtomicU64::new(0),
            service,
        }
    }

    pub(super) fn admit(&self, request: &Request<ProxyBody>) -> Result<(), Duration> {
        let key = self.by.key_of(request);
        let decision = self
            .limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()));
        if self.full.load(Ordering::Relaxed) {
            self.sweep_if_due();
        }
        decision
    }

    /// Drops the keys whose buckets have refilled (they are indistinguishable from new
    /// ones), at most once per [`SWEEP_INTERVAL`] and only while the table is full.
    ///
    /// NOTE: the sweep runs inline on the request of the caller that wins the election:
    /// O(`max_keys`) work at most once a second, which needs neither a runtime at
    /// construction nor a task to stop, and is exact under a fake clock.
    fn sweep_if_due(&self) {
        let now = self
            .limiter
            .clock()
            .now()
            .duration_since(self.start)
            .as_u64();
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_INTERVAL.as_nanos() as u64 {
            return;
        }
        if self
            .last_sweep
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.limiter.retain_recent();
        if self.limiter.len() < self.max_keys && self.full.swap(false, Ordering::Relaxed) {
            tracing::info!(
                service = %self.service,
                keys = self.limiter.len(),
                "rate limit key table has room again"
            );
        }
    }

    #[cfg(test)]
    pub(super) fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }
}

/// Per-key GCRA state holding at most about `max_keys` keys.
///
/// A key already in the table uses its own bucket. A new key gets one while the table
/// has room; when it is full, new keys share the `overflow` bucket, so a flood of fresh
/// keys is limited together while known clients keep their own buckets. Concurrent
/// inserts may overshoot `max_keys` by the number of callers racing at that moment.
struct BoundedKeys {
    keys: DashMapStateStore<BucketKey>,
    overflow: InMemoryState,
    max_keys: usize,
    /// Shared with the [`KeyedLimiter`], which sweeps while it is set.
    full: Arc<AtomicBool>,
    service: Arc<str>,
}

impl StateStore for BoundedKeys {
    type Key = BucketKey;

    fn measure_and_replace<T, F, E>(&self, key: &BucketKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.keys.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if self.keys.len() >= self.max_keys {
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    service = %self.service,
                    max_keys = self.max_keys,
                    "rate limit key table full: new keys share one overflow bucket"
                );
            }
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let state = self.keys.entry(key.clone()).or_default();
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<BucketKey> for BoundedKeys {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.keys, drop_below);
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
