//! The rate limit driven through its service with a fake clock.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use http::{HeaderName, Request};
use prometheus_client::registry::Registry as MetricsRegistry;
use tower::{Layer, Service, ServiceExt};

use super::layer::Limiter;
use super::*;
use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;
use crate::policy::test_support::{proxied, proxied_from, Upstream};

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
    service: RateLimit<Upstream, FakeRelativeClock>,
    clock: FakeRelativeClock,
    upstream: Upstream,
    metrics: RateLimitMetrics,
}

impl Harness {
    fn new(config: &RateLimitConfig) -> Self {
        let clock = FakeRelativeClock::default();
        let metrics = RateLimitMetrics::register(&mut MetricsRegistry::default());
        let upstream = Upstream::ok();
        let layer =
            RateLimitLayer::with_clock("svc".into(), "limit", config, &metrics, clock.clone());
        Self {
            service: layer.layer(upstream.clone()),
            clock,
            upstream,
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
            Limiter::Global(_) | Limiter::Shared(_) => 0,
        }
    }
}

fn plain() -> Request<ProxyBody> {
    proxied(Request::new(ProxyBody::empty()))
}

fn from(addr: &str) -> Request<ProxyBody> {
    let addr: SocketAddr = addr.parse().unwrap();
    proxied_from(addr, Request::new(ProxyBody::empty()))
}

fn with_key(value: &str) -> Request<ProxyBody> {
    let request = Request::builder()
        .header("x-api-key", value)
        .body(ProxyBody::empty())
        .unwrap();
    proxied(request)
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
    assert_eq!(h.upstream.calls(), 4);
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
    assert_eq!(h.tracked_keys(), 4);
    assert_eq!(h.limited(), 3);
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
    assert_eq!(h.upstream.calls(), 5);
}

#[tokio::test]
async fn key_table_stays_bounded_under_a_flood_of_distinct_keys() {
    let key = RateLimitKey::Header(HeaderName::from_static("x-api-key"));
    let config =
        config(1, Duration::from_secs(1), 1, key).with_max_keys(NonZeroUsize::new(1000).unwrap());
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
        RateLimitConfig::try_new(rate(1, Duration::ZERO), nz(1), RateLimitKey::Global).unwrap_err(),
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
