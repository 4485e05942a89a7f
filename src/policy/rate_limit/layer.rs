//! The rate-limit layer and the limiter its clones share: one bucket for the service,
//! or one per key.

use std::hash::RandomState;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::RateLimiter;
use http::Request;
use prometheus_client::metrics::counter::Counter;
use tower::Layer;

use super::config::{RateLimitConfig, RateLimitKey};
use super::key::{KeyBy, KeyedLimiter};
use super::metrics::RateLimitMetrics;
use super::service::RateLimit;
use crate::core::body::ProxyBody;

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
    /// A layer limiting `service`'s calls on `clock` (the system clock in production;
    /// the tests pass governor's `FakeRelativeClock`).
    pub(super) fn with_clock(
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
pub(super) struct Shared<C: Clock> {
    pub(super) limiter: Limiter<C>,
    /// This service's `rate_limited` counter.
    pub(super) limited: Counter,
}

type DirectLimiter<C> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One bucket for the service, or one per key.
pub(super) enum Limiter<C: Clock> {
    Global(DirectLimiter<C>),
    Keyed(KeyedLimiter<C>),
}

impl<C: Clock> Limiter<C> {
    /// `Ok` when the call may pass, else how long until one with its key would.
    pub(super) fn admit(&self, request: &Request<ProxyBody>) -> Result<(), Duration> {
        match self {
            Self::Global(limiter) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(limiter.clock().now())),
            Self::Keyed(keyed) => keyed.admit(request),
        }
    }
}
