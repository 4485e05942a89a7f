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
use super::shared::SharedLimiter;
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
    /// A layer limiting `service`'s calls by the limit named `limit`, on the monotonic
    /// clock.
    pub fn new(
        service: Arc<str>,
        limit: &str,
        config: &RateLimitConfig,
        metrics: &RateLimitMetrics,
    ) -> Self {
        Self::with_clock(service, limit, config, metrics, DefaultClock::default())
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
        limit: &str,
        config: &RateLimitConfig,
        metrics: &RateLimitMetrics,
        clock: C,
    ) -> Self {
        let local = match &config.key {
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
        let limiter = match &config.shared {
            None => local,
            Some(shared) => {
                let limiter = Arc::new(SharedLimiter::new(
                    config,
                    shared,
                    service.clone(),
                    limit.into(),
                    metrics,
                    local,
                ));
                limiter.warm_up();
                Limiter::Shared(limiter)
            }
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

/// One bucket for the service, or one per key; in this replica or in Redis.
pub(super) enum Limiter<C: Clock> {
    Global(DirectLimiter<C>),
    Keyed(KeyedLimiter<C>),
    Shared(Arc<SharedLimiter<C>>),
}

impl<C: Clock> Limiter<C> {
    /// `Ok` when the call may pass, else how long until one with its key would.
    ///
    /// A shared limiter cannot answer here without Redis: the service asks it through
    /// [`SharedLimiter::first_look`] instead, and this answers by its local fallback.
    pub(super) fn admit(&self, request: &Request<ProxyBody>) -> Result<(), Duration> {
        match self {
            Self::Global(limiter) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(limiter.clock().now())),
            Self::Keyed(keyed) => keyed.admit(request),
            Self::Shared(shared) => shared.local().admit(request),
        }
    }
}
