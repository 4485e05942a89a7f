//! The concurrency cap: at most `max_in_flight` calls to a service at once; the next
//! one is shed at once with [`ProxyError::Overloaded`], never queued.
//!
//! A call counts from admission until its response headers arrive (the inner future
//! completes, with a response or an error) or until the caller drops it. A streamed
//! response body still flowing after the headers is not counted: `ProxyBody` is a
//! closed enum with nothing to hook a body's end, and the cap guards the upstream's
//! request handling, which has ended once it answered.
//!
//! Not tower's `limit::ConcurrencyLimit`: that one makes a caller wait in `poll_ready`
//! for a permit, a queue in front of the service, where this cap never queues and fails
//! the extra call at once as [`ProxyError::Overloaded`] (which the fallback can degrade),
//! counted per service and logged once per episode.

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;
use tower::{Layer, Service};

use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;
use crate::core::labels::{register_per_service, ByService, PerService};

/// A service's concurrency cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyConfig {
    /// Calls admitted at once; the next is shed.
    pub max_in_flight: NonZeroUsize,
}

/// Concurrency-cap metrics, shared by every service's layer.
#[derive(Debug, Clone)]
pub struct ConcurrencyMetrics {
    shed: PerService<Counter>,
    in_flight: PerService<Gauge>,
}

impl ConcurrencyMetrics {
    /// Registers the concurrency-cap metrics.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        Self {
            shed: register_per_service(
                registry,
                "concurrency_shed",
                "Requests shed because the service was at its concurrency cap, by service",
            ),
            in_flight: register_per_service(
                registry,
                "concurrency_in_flight",
                "Requests admitted and awaiting response headers, by service",
            ),
        }
    }

    fn labels(service: &Arc<str>) -> ByService {
        ByService::of(service)
    }
}

/// Caps the calls in flight to one service.
///
/// Every clone of the layer, and every service it makes, shares one count.
#[derive(Debug, Clone)]
pub struct ConcurrencyLayer {
    cap: Arc<Cap>,
}

impl ConcurrencyLayer {
    /// A layer capping `service`'s calls in flight.
    pub fn new(service: Arc<str>, config: ConcurrencyConfig, metrics: &ConcurrencyMetrics) -> Self {
        let labels = ConcurrencyMetrics::labels(&service);
        Self {
            cap: Arc::new(Cap {
                max: config.max_in_flight.get(),
                in_flight: AtomicUsize::new(0),
                shedding: AtomicBool::new(false),
                shed: metrics.shed.get_or_create(&labels).clone(),
                in_flight_gauge: metrics.in_flight.get_or_create(&labels).clone(),
                service,
            }),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            cap: self.cap.clone(),
        }
    }
}

/// The count of calls in flight and what reports it.
#[derive(Debug)]
struct Cap {
    max: usize,
    /// Admitted calls not yet answered; never above `max`.
    in_flight: AtomicUsize,
    /// Whether shedding was logged and its end not yet: set by the first shed call,
    /// cleared once in-flight calls fall to half the cap (hysteresis, so a service
    /// hovering at its cap logs once, not at every crossing).
    shedding: AtomicBool,
    shed: Counter,
    in_flight_gauge: Gauge,
    service: Arc<str>,
}

impl Cap {
    /// A slot for one call, or `None` when the cap is reached.
    fn try_acquire(self: &Arc<Self>) -> Option<InFlight> {
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.shed.inc();
            if !self.shedding.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    service = %self.service,
                    max_in_flight = self.max,
                    "concurrency cap reached: shedding requests"
                );
            }
            return None;
        }
        self.in_flight_gauge.inc();
        Some(InFlight { cap: self.clone() })
    }

    fn release(&self) {
        let before = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.in_flight_gauge.dec();
        if before - 1 <= self.max / 2
            && self.shedding.load(Ordering::Relaxed)
            && self.shedding.swap(false, Ordering::Relaxed)
        {
            tracing::info!(service = %self.service, "concurrency back under cap: no longer shedding");
        }
    }
}

/// One admitted call's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct InFlight {
    cap: Arc<Cap>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cap.release();
    }
}

/// A service whose calls beyond the cap are shed.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    cap: Arc<Cap>,
}

impl<S> Service<Request<ProxyBody>> for ConcurrencyLimit<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        match self.cap.try_acquire() {
            Some(slot) => ResponseFuture::Admitted {
                inner: self.inner.call(request),
                slot: Some(slot),
            },
            None => ResponseFuture::Shed {
                service: Some(self.cap.service.clone()),
            },
        }
    }
}

pin_project! {
    /// The response of a capped call: the inner call holding its slot, or a shed.
    #[project = ResponseFutureProj]
    pub enum ResponseFuture<F> {
        /// Admitted: the slot is held until the inner future completes or is dropped.
        Admitted {
            #[pin]
            inner: F,
            slot: Option<InFlight>,
        },
        /// Shed: fails at first poll.
        Shed { service: Option<Arc<str>> },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Admitted { inner, slot } => {
                let output = std::task::ready!(inner.poll(cx));
                slot.take();
                Poll::Ready(output)
            }
            ResponseFutureProj::Shed { service } => {
                let service = service.take().map_or_else(String::new, |s| s.to_string());
                Poll::Ready(Err(ProxyError::Overloaded(service)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;
    use tower::ServiceExt;

    use super::*;
    use crate::policy::test_support::{proxied, Upstream};

    struct Harness {
        service: ConcurrencyLimit<Upstream>,
        metrics: ConcurrencyMetrics,
    }

    impl Harness {
        /// A cap of `max` over an upstream that answers after one second.
        fn new(max: usize) -> Self {
            let metrics = ConcurrencyMetrics::register(&mut MetricsRegistry::default());
            let config = ConcurrencyConfig {
                max_in_flight: NonZeroUsize::new(max).unwrap(),
            };
            let upstream = Upstream::ok().after(|_| Duration::from_secs(1));
            let layer = ConcurrencyLayer::new("svc".into(), config, &metrics);
            Self {
                service: layer.layer(upstream),
                metrics,
            }
        }

        async fn call(
            &mut self,
        ) -> ResponseFuture<impl Future<Output = Result<Response<ProxyBody>, ProxyError>>> {
            let request = proxied(Request::new(ProxyBody::empty()));
            self.service.ready().await.unwrap().call(request)
        }

        fn in_flight(&self) -> i64 {
            self.metrics
                .in_flight
                .get_or_create(&ConcurrencyMetrics::labels(&"svc".into()))
                .get()
        }

        fn shed(&self) -> u64 {
            self.metrics
                .shed
                .get_or_create(&ConcurrencyMetrics::labels(&"svc".into()))
                .get()
        }
    }

    fn is_overloaded(result: Option<Result<Response<ProxyBody>, ProxyError>>) -> bool {
        matches!(result, Some(Err(ProxyError::Overloaded(service))) if service == "svc")
    }

    #[tokio::test(start_paused = true)]
    async fn sheds_the_call_past_the_cap_at_once_and_admits_after_one_finishes() {
        let mut h = Harness::new(2);
        let first = h.call().await;
        let second = h.call().await;
        assert_eq!(h.in_flight(), 2);

        // Shed without waiting: the future is ready on its first poll.
        assert!(is_overloaded(h.call().await.now_or_never()));
        assert_eq!(h.shed(), 1);
        assert_eq!(h.in_flight(), 2);

        first.await.unwrap();
        assert_eq!(h.in_flight(), 1);
        let third = h.call().await;
        assert_eq!(h.in_flight(), 2);
        assert!(is_overloaded(h.call().await.now_or_never()));
        assert_eq!(h.shed(), 2);

        second.await.unwrap();
        third.await.unwrap();
        assert_eq!(h.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_call_releases_its_slot() {
        let mut h = Harness::new(1);
        let mut abandoned = h.call().await;
        // Polled once (the upstream call is under way), then abandoned by the caller.
        assert!((&mut abandoned).now_or_never().is_none());
        assert!(is_overloaded(h.call().await.now_or_never()));
        drop(abandoned);
        assert_eq!(h.in_flight(), 0);
        h.call().await.await.unwrap();
        assert_eq!(h.shed(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_inner_error_releases_its_slot() {
        let metrics = ConcurrencyMetrics::register(&mut MetricsRegistry::default());
        let config = ConcurrencyConfig {
            max_in_flight: NonZeroUsize::new(1).unwrap(),
        };
        let inner =
            Upstream::answering(|_| Err(ProxyError::Timeout(Duration::from_secs(1))).into());
        let mut service = ConcurrencyLayer::new("svc".into(), config, &metrics).layer(inner);
        for _ in 0..3 {
            let result = service
                .ready()
                .await
                .unwrap()
                .call(proxied(Request::new(ProxyBody::empty())))
                .await;
            assert!(matches!(result, Err(ProxyError::Timeout(_))));
        }
        let labels = ConcurrencyMetrics::labels(&"svc".into());
        assert_eq!(metrics.shed.get_or_create(&labels).get(), 0);
        assert_eq!(metrics.in_flight.get_or_create(&labels).get(), 0);
    }
}
