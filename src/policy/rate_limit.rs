//! Rate limiting: a GCRA token bucket (the `governor` crate) per service, per client IP
//! or per header value.
//!
//! This layer sits outermost in a service's stack, so it counts the calls a client
//! makes, not the attempts retries make below it. A refused call fails at once with
//! [`ProxyError::RateLimited`], whose `retry_after` is the limiter's real wait until a
//! call with the same key would pass (the `Retry-After` a caller sees).
//!
//! Keyed limits keep one bucket per key in a table of at most
//! [`RateLimitConfig::max_keys`] entries, so hostile keys (spoofed header values, a
//! rotating IPv6 range) cannot grow memory without bound. When the table is full, calls
//! with a key it does not hold share one overflow bucket of the same quota until a
//! sweep drops the keys whose buckets have refilled.

use std::hash::BuildHasher;
use std::hash::RandomState;
use std::net::{IpAddr, Ipv6Addr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{self, Either, Ready};
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use http::{HeaderName, Request, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

use crate::core::body::ProxyBody;
use crate::core::call::CallInfo;
use crate::core::error::ProxyError;
use crate::core::labels::{register_per_service, ByService, PerService};

/// Keys a keyed limiter tracks unless configured otherwise (a few MiB of state).
pub const DEFAULT_MAX_KEYS: NonZeroUsize = NonZeroUsize::new(100_000).unwrap();

/// How often, at most, a full key table is swept for keys whose buckets have refilled.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

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
    /// Requests without a `CallInfo` share one bucket.
    ClientIp,
    /// One bucket per value of this header (its first value). Requests without the
    /// header share one "missing" bucket. A client chooses its header, so this is a
    /// fairness tool between cooperating callers, not a defence.
    Header(HeaderName),
}

/// A validated rate limit.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    rate: Rate,
    /// The GCRA quota: one call every `per / count`, bursts of up to `burst`.
    quota: Quota,
    key: RateLimitKey,
    /// Upper bound on the keys a keyed limiter tracks at once.
    max_keys: NonZeroUsize,
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
        })
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

/// Rate-limit metrics, shared by every service's layer.
#[derive(Debug, Clone)]
pub struct RateLimitMetrics {
    limited: PerService<Counter>,
}

impl RateLimitMetrics {
    /// Registers the rate-limit metrics.
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            limited: register_per_service(
                registry,
                "rate_limited",
                "Requests refused by a rate limit, by service",
            ),
        }
    }

    fn limited(&self, service: &Arc<str>) -> Counter {
        self.limited.get_or_create(&ByService::of(service)).clone()
    }
}

/// Applies a rate limit to a service's calls.
///
/// Every clone of the layer, and every service it makes, shares one limiter.
pub struct RateLimitLayer<C: Clock = DefaultClock> {
    shared: Arc<Shared<C>>,
}

impl<C: Clock> Clone for RateLimitLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl RateLimitLayer {
    /// A layer limiting `service`'s calls on the monotonic clock.
    pub fn new(service: Arc<str>, config: &RateLimitConfig, metrics: &RateLimitMetrics) -> Self {
        Self::with_clock(service, config, metrics, DefaultClock::default())
    }
}

impl<C> RateLimitLayer<C>
where
    C: Clock + Send + Sync + 'static,
{
    /// A layer limiting `service`'s calls on `clock` (tests pass governor's
    /// `FakeRelativeClock`).
    pub fn with_clock(
        service: Arc<str>,
        config: &RateLimitConfig,
        metrics: &RateLimitMetrics,
        clock: C,
    ) -> Self {
        let limiter = match &config.key {
            RateLimitKey::Global => {
                Limiter::Global(RateLimiter::direct_with_clock(config.quota, clock))
            }
            RateLimitKey::ClientIp => Limiter::Keyed(KeyedLimiter::new(
                KeyBy::ClientIp,
                config,
                clock,
                service.clone(),
            )),
            RateLimitKey::Header(name) => Limiter::Keyed(KeyedLimiter::new(
                KeyBy::Header {
                    name: name.clone(),
                    digest: RandomState::new(),
                },
                config,
                clock,
                service.clone(),
            )),
        };
        Self {
            shared: Arc::new(Shared {
                limited: metrics.limited(&service),
                limiter,
            }),
        }
    }
}

impl<S, C: Clock> Layer<S> for RateLimitLayer<C> {
    type Service = RateLimit<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// What every clone of a layer and its services shares.
struct Shared<C: Clock> {
    limiter: Limiter<C>,
    /// This service's `rate_limited` counter.
    limited: Counter,
}

type DirectLimiter<C> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One bucket for the service, or one per key.
enum Limiter<C: Clock> {
    Global(DirectLimiter<C>),
    Keyed(KeyedLimiter<C>),
}

impl<C: Clock> Limiter<C> {
    /// `Ok` when the call may pass, else how long until one with its key would.
    fn admit(&self, request: &Request<ProxyBody>) -> Result<(), Duration> {
        match self {
            Self::Global(limiter) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(limiter.clock().now())),
            Self::Keyed(keyed) => keyed.admit(request),
        }
    }
}

/// The key of one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    /// A client IP (an IPv6 one masked to its /64).
    Ip(IpAddr),
    /// A digest of a header value: fixed-size state however long the value, and
    /// seeded per layer so that clients cannot aim for collisions.
    Header(u64),
    /// No client address, or no header.
    Missing,
}

/// How a keyed limiter derives a request's key.
enum KeyBy {
    ClientIp,
    Header {
        name: HeaderName,
        digest: RandomState,
    },
}

impl KeyBy {
    fn key_of(&self, request: &Request<ProxyBody>) -> BucketKey {
        match self {
            Self::ClientIp => match request.extensions().get::<CallInfo>() {
                Some(call) => BucketKey::Ip(client_ip_key(call.client.ip())),
                None => BucketKey::Missing,
            },
            Self::Header { name, digest } => match request.headers().get(name) {
                Some(value) => BucketKey::Header(digest.hash_one(value.as_bytes())),
                None => BucketKey::Missing,
            },
        }
    }
}

/// The address a client is counted by: IPv4 as is, IPv6 by its /64 prefix.
fn client_ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
    }
}

type KeyedGovernor<C> =
    RateLimiter<BucketKey, BoundedKeys, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A limiter with one bucket per key and a bounded key table.
struct KeyedLimiter<C: Clock> {
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
    fn new(by: KeyBy, config: &RateLimitConfig, clock: C, service: Arc<str>) -> Self {
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

    fn admit(&self, request: &Request<ProxyBody>) -> Result<(), Duration> {
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
    fn tracked_keys(&self) -> usize {
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

/// A service whose calls pass a rate limit first.
pub struct RateLimit<S, C: Clock = DefaultClock> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C: Clock> Clone for RateLimit<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, C> Service<Request<ProxyBody>> for RateLimit<S, C>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    C: Clock,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = Either<Ready<Result<Response<ProxyBody>, ProxyError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        match self.shared.limiter.admit(&request) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(retry_after) => {
                self.shared.limited.inc();
                Either::Left(future::ready(Err(ProxyError::RateLimited { retry_after })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use governor::clock::FakeRelativeClock;
    use tower::ServiceExt;

    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn config(count: u32, per: Duration, burst: u32, key: RateLimitKey) -> RateLimitConfig {
        RateLimitConfig::try_new(
            Rate {
                count: nz(count),
                per,
            },
            nz(burst),
            key,
        )
        .unwrap()
    }

    struct Harness {
        service: RateLimit<
            tower::util::BoxCloneSyncService<Request<ProxyBody>, Response<ProxyBody>, ProxyError>,
            FakeRelativeClock,
        >,
        clock: FakeRelativeClock,
        calls: Arc<AtomicUsize>,
        metrics: RateLimitMetrics,
    }

    impl Harness {
        fn new(config: &RateLimitConfig) -> Self {
            let clock = FakeRelativeClock::default();
            let metrics = RateLimitMetrics::register(&mut Registry::default());
            let calls = Arc::new(AtomicUsize::new(0));
            let counted = calls.clone();
            let inner = tower::service_fn(move |_request: Request<ProxyBody>| {
                counted.fetch_add(1, Ordering::SeqCst);
                future::ready(Ok::<_, ProxyError>(Response::new(ProxyBody::empty())))
            });
            let layer = RateLimitLayer::with_clock("svc".into(), config, &metrics, clock.clone());
            Self {
                service: layer.layer(tower::util::BoxCloneSyncService::new(inner)),
                clock,
                calls,
                metrics,
            }
        }

        /// `None` when admitted, else the `retry_after` of the refusal.
        async fn send(&mut self, request: Request<ProxyBody>) -> Option<Duration> {
            match self.service.ready().await.unwrap().call(request).await {
                Ok(_) => None,
                Err(ProxyError::RateLimited { retry_after }) => Some(retry_after),
                Err(other) => panic!("unexpected error {other}"),
            }
        }

        fn limited(&self) -> u64 {
            self.metrics.limited(&"svc".into()).get()
        }

        fn tracked_keys(&self) -> usize {
            match &self.service.shared.limiter {
                Limiter::Keyed(keyed) => keyed.tracked_keys(),
                Limiter::Global(_) => 0,
            }
        }
    }

    fn plain() -> Request<ProxyBody> {
        Request::new(ProxyBody::empty())
    }

    fn from(addr: &str) -> Request<ProxyBody> {
        let mut request = plain();
        let addr: SocketAddr = addr.parse().unwrap();
        request.extensions_mut().insert(CallInfo::new(addr));
        request
    }

    fn with_key(value: &str) -> Request<ProxyBody> {
        let mut request = plain();
        request
            .headers_mut()
            .insert("x-api-key", value.parse().unwrap());
        request
    }

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn burst_then_refusal_with_exact_retry_after() {
        let mut h = Harness::new(&config(10, Duration::from_secs(1), 3, RateLimitKey::Global));
        for _ in 0..3 {
            assert_eq!(h.send(plain()).await, None);
        }
        assert_eq!(h.send(plain()).await, Some(100 * MS));
        h.clock.advance(40 * MS);
        assert_eq!(h.send(plain()).await, Some(60 * MS));
        h.clock.advance(60 * MS);
        assert_eq!(h.send(plain()).await, None);
        assert_eq!(h.send(plain()).await, Some(100 * MS));
        assert_eq!(h.calls.load(Ordering::SeqCst), 4);
        assert_eq!(h.limited(), 3);
    }

    #[tokio::test]
    async fn a_refilled_bucket_admits_a_whole_burst_again() {
        let mut h = Harness::new(&config(2, Duration::from_secs(1), 2, RateLimitKey::Global));
        assert_eq!(h.send(plain()).await, None);
        assert_eq!(h.send(plain()).await, None);
        assert_eq!(h.send(plain()).await, Some(500 * MS));
        h.clock.advance(Duration::from_secs(10));
        assert_eq!(h.send(plain()).await, None);
        assert_eq!(h.send(plain()).await, None);
        assert_eq!(h.send(plain()).await, Some(500 * MS));
    }

    #[tokio::test]
    async fn client_ips_have_their_own_buckets() {
        let mut h = Harness::new(&config(
            1,
            Duration::from_secs(1),
            1,
            RateLimitKey::ClientIp,
        ));
        assert_eq!(h.send(from("192.0.2.1:1000")).await, None);
        // Same IP from another port: same bucket.
        assert_eq!(
            h.send(from("192.0.2.1:2000")).await,
            Some(Duration::from_secs(1))
        );
        // The same IPv4 client over a dual-stack socket: same bucket.
        assert_eq!(
            h.send(from("[::ffff:192.0.2.1]:3000")).await,
            Some(Duration::from_secs(1))
        );
        assert_eq!(h.send(from("192.0.2.2:1000")).await, None);
        // One IPv6 /64 is one client; another /64 is another.
        assert_eq!(h.send(from("[2001:db8:0:1::1]:1000")).await, None);
        assert_eq!(
            h.send(from("[2001:db8:0:1::2]:1000")).await,
            Some(Duration::from_secs(1))
        );
        assert_eq!(h.send(from("[2001:db8:0:2::1]:1000")).await, None);
        // No client address: one shared bucket.
        assert_eq!(h.send(plain()).await, None);
        assert_eq!(h.send(plain()).await, Some(Duration::from_secs(1)));
        assert_eq!(h.tracked_keys(), 5);
        assert_eq!(h.limited(), 4);
    }

    #[tokio::test]
    async fn header_values_have_their_own_buckets_and_missing_ones_share() {
        let key = RateLimitKey::Header(HeaderName::from_static("x-api-key"));
        let mut h = Harness::new(&config(4, Duration::from_secs(1), 2, key));
        assert_eq!(h.send(with_key("alice")).await, None);
        assert_eq!(h.send(with_key("alice")).await, None);
        assert_eq!(h.send(with_key("alice")).await, Some(250 * MS));
        assert_eq!(h.send(with_key("bob")).await, None);
        h.clock.advance(100 * MS);
        assert_eq!(h.send(with_key("alice")).await, Some(150 * MS));
        assert_eq!(h.send(plain()).await, None);
        assert_eq!(h.send(plain()).await, None);
        assert_eq!(h.send(plain()).await, Some(250 * MS));
        assert_eq!(h.calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn key_table_stays_bounded_under_a_flood_of_distinct_keys() {
        let key = RateLimitKey::Header(HeaderName::from_static("x-api-key"));
        let config = config(1, Duration::from_secs(1), 1, key)
            .with_max_keys(NonZeroUsize::new(1000).unwrap());
        let mut h = Harness::new(&config);
        let mut admitted = 0;
        for i in 0..100_000 {
            if h.send(with_key(&format!("key-{i}"))).await.is_none() {
                admitted += 1;
            }
        }
        assert_eq!(h.tracked_keys(), 1000);
        // 1000 keys with their own bucket, then one call through the shared overflow one.
        assert_eq!(admitted, 1001);
        // A key the table holds keeps its own bucket.
        h.clock.advance(Duration::from_secs(1));
        assert_eq!(h.send(with_key("key-7")).await, None);
        assert_eq!(
            h.send(with_key("key-7")).await,
            Some(Duration::from_secs(1))
        );

        // Once the buckets refilled, the sweep frees the table for new keys.
        h.clock.advance(Duration::from_secs(2));
        assert_eq!(h.send(with_key("fresh-1")).await, None);
        assert_eq!(h.tracked_keys(), 0);
        assert_eq!(h.send(with_key("fresh-2")).await, None);
        assert_eq!(
            h.send(with_key("fresh-2")).await,
            Some(Duration::from_secs(1))
        );
        assert_eq!(h.tracked_keys(), 1);
    }

    #[test]
    fn nonsense_rates_are_refused() {
        let rate = |count, per| Rate {
            count: nz(count),
            per,
        };
        assert_eq!(
            RateLimitConfig::try_new(rate(1, Duration::ZERO), nz(1), RateLimitKey::Global)
                .unwrap_err(),
            RateLimitConfigError::ZeroPeriod
        );
        let too_fine = RateLimitConfig::try_new(
            rate(1000, Duration::from_nanos(999)),
            nz(1),
            RateLimitKey::Global,
        );
        assert!(matches!(
            too_fine,
            Err(RateLimitConfigError::TooFine { .. })
        ));
        let too_slow = RateLimitConfig::try_new(
            rate(1, Duration::from_secs(365 * 24 * 3600)),
            nz(1000),
            RateLimitKey::Global,
        );
        assert!(matches!(
            too_slow,
            Err(RateLimitConfigError::TooSlow { .. })
        ));
        let ok = config(10, Duration::from_secs(1), 20, RateLimitKey::Global);
        assert_eq!(ok.replenish_interval(), 100 * MS);
        assert_eq!(ok.burst(), nz(20));
    }

    #[test]
    fn fits_the_service_stack() {
        let metrics = RateLimitMetrics::register(&mut Registry::default());
        let config = config(1, Duration::from_secs(1), 1, RateLimitKey::ClientIp);
        let inner = tower::service_fn(|_request: Request<ProxyBody>| {
            future::ready(Ok::<_, ProxyError>(Response::new(ProxyBody::empty())))
        });
        let layer = RateLimitLayer::new("svc".into(), &config, &metrics);
        let _stack: crate::policy::ServiceStack =
            tower::util::BoxCloneSyncService::new(layer.layer(inner));
    }
}
