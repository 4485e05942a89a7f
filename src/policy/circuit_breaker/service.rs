//! The service breaker: a tower layer that fails calls fast while the service is down.
//!
//! It sits below retry and above the balancer. While closed a call goes through without
//! taking the breaker's lock (a published atomic says "closed, generation g"); only its
//! outcome takes the lock, briefly. While open, a call is answered
//! [`ProxyError::BreakerOpen`] without reaching the service below. While half-open, at
//! most `half_open_requests` calls go through as probes and the rest are refused.
//!
//! What fails: whatever `failure_on` names, and also [`ProxyError::NoHealthyEndpoint`]:
//! when the balancer has no endpoint to offer (all unhealthy, ejected or held out by
//! their own breakers) the service is down as far as this caller can tell, and opening
//! the service breaker makes the following calls fail fast and lets fallback degrade.
//! Other errors remora decides itself (rate limited, overloaded, draining, bad request)
//! say nothing about the service and are successes as far as the breaker is concerned —
//! as is a call whose future is dropped before it ends (its caller went away or an outer
//! timeout fired): no outcome is recorded, and a probe gives its slot back.
//!
//! NOTE: the service breaker turns half-open lazily, on the first call (or admin
//! snapshot) after its open time, so the state gauge may read "open" past that time
//! while no call comes. Nothing is refused in that gap, and it saves a timer task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::state::{Breaker, BreakerState, Ticket, Transition};
use super::{log_transition, BreakerConfig, BreakerMetrics, BreakerView};
use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;

/// Wraps a service's stack in its circuit breaker. Every service made from one layer
/// (and its clones) shares one breaker.
#[derive(Debug, Clone)]
pub struct ServiceBreakerLayer {
    shared: Arc<Shared>,
}

impl ServiceBreakerLayer {
    /// The breaker of `service`, closed.
    pub fn new(service: Arc<str>, config: BreakerConfig, metrics: BreakerMetrics) -> Self {
        let config = Arc::new(config);
        let breaker = Breaker::new(config.clone(), Instant::now());
        metrics.created(&service, None);
        let shared = Shared {
            published: AtomicU64::new(publish(&breaker)),
            settled: AtomicBool::new(breaker.settled()),
            breaker: Mutex::new(breaker),
            rejected: metrics.rejected(&service),
            service,
            config,
            metrics,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// A handle for the admin page.
    pub fn handle(&self) -> ServiceBreakerHandle {
        ServiceBreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for ServiceBreakerLayer {
    type Service = ServiceBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServiceBreaker {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Reads a service breaker's state, for the admin `/breakers` page.
#[derive(Debug, Clone)]
pub struct ServiceBreakerHandle {
    shared: Arc<Shared>,
}

impl ServiceBreakerHandle {
    /// The breaker as it stands (an open breaker whose time has passed turns half-open
    /// here, as it would on the next call).
    pub fn snapshot(&self) -> Vec<BreakerView> {
        let now = Instant::now();
        let mut breaker = self.shared.lock();
        let transition = breaker.tick(now);
        self.shared.after_change(&breaker, transition.as_ref());
        let view = BreakerView {
            service: self.shared.service.to_string(),
            endpoint: None,
            state: breaker.state().as_str(),
            consecutive_failures: breaker.consecutive_failures(),
            failure_rate: breaker.failure_rate(now),
            opened_for: breaker.opened_for(),
        };
        drop(breaker);
        self.shared.log(transition);
        vec![view]
    }

    /// The breaker's state.
    pub fn state(&self) -> BreakerState {
        self.shared.lock().state()
    }
}

/// The service a [`ServiceBreakerLayer`] makes.
#[derive(Debug, Clone)]
pub struct ServiceBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<ProxyBody>> for ServiceBreaker<S>
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
        let Some(permit) = self.shared.admit() else {
            self.shared.rejected.inc();
            return ResponseFuture {
                inner: Inner::Refused {
                    service: self.shared.service.clone(),
                },
            };
        };
        ResponseFuture {
            inner: Inner::Called {
                future: self.inner.call(request),
                permit: Some(permit),
            },
        }
    }
}

pin_project! {
    /// The response of a [`ServiceBreaker`]: the inner call, reporting its outcome, or an
    /// immediate refusal.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Inner<F>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<F> {
        Called {
            #[pin]
            future: F,
            // Taken when the outcome is recorded; dropped unused, it frees a probe slot.
            permit: Option<Permit>,
        },
        Refused {
            service: Arc<str>,
        },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Called { future, permit } => {
                let result = ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    permit.record(&result);
                }
                Poll::Ready(result)
            }
            InnerProj::Refused { service } => {
                Poll::Ready(Err(ProxyError::BreakerOpen(service.to_string())))
            }
        }
    }
}

/// A call's leave to go through; dropped without an outcome, it gives a probe slot back.
#[derive(Debug)]
struct Permit {
    shared: Arc<Shared>,
    /// `None` once the outcome is recorded.
    ticket: Option<Ticket>,
}

impl Permit {
    /// Records how the call ended.
    fn record(mut self, result: &Result<Response<ProxyBody>, ProxyError>) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let failed = matches!(result, Err(ProxyError::NoHealthyEndpoint(_)))
            || self.shared.config.failure_on().matches(result);
        self.shared.record(ticket, failed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take().filter(Ticket::is_probe) {
            let mut breaker = self.shared.lock();
            breaker.release(ticket);
        }
    }
}

/// One service breaker, shared by every clone of its layer and services.
#[derive(Debug)]
struct Shared {
    service: Arc<str>,
    config: Arc<BreakerConfig>,
    /// `generation << 2 | state` of the breaker, written under the lock after every
    /// change, read without it by calls while closed.
    published: AtomicU64,
    /// [`Breaker::settled`], written under the lock after every record: while it holds, a
    /// closed call's success is not recorded at all (no lock, no clock). A success
    /// racing a failure may then not reset the failure count: the same as if it had
    /// finished just before that failure.
    settled: AtomicBool,
    breaker: Mutex<Breaker>,
    metrics: BreakerMetrics,
    /// This service's refused-calls counter.
    rejected: Counter,
}

impl Shared {
    /// Admits a call, or refuses it.
    fn admit(self: &Arc<Self>) -> Option<Permit> {
        let published = self.published.load(Ordering::Acquire);
        if published & STATE_MASK == CLOSED {
            return Some(Permit {
                shared: self.clone(),
                ticket: Some(Ticket::closed(published >> STATE_BITS)),
            });
        }
        let mut breaker = self.lock();
        let transition = breaker.tick(Instant::now());
        let ticket = breaker.try_admit();
        self.after_change(&breaker, transition.as_ref());
        drop(breaker);
        self.log(transition);
        let ticket = ticket?;
        Some(Permit {
            shared: self.clone(),
            ticket: Some(ticket),
        })
    }

    /// Records an admitted call's outcome.
    fn record(&self, ticket: Ticket, failed: bool) {
        if !failed
            && !ticket.is_probe()
            && self.settled.load(Ordering::Acquire)
            && self.published.load(Ordering::Acquire) == ticket.generation() << STATE_BITS | CLOSED
        {
            return;
        }
        let mut breaker = self.lock();
        let transition = breaker.record(ticket, failed, Instant::now());
        self.settled.store(breaker.settled(), Ordering::Release);
        self.after_change(&breaker, transition.as_ref());
        drop(breaker);
        self.log(transition);
    }

    /// Publishes the breaker's state after a change, and counts the transition in
    /// metrics (under the lock, so that the gauge follows transitions in order).
    fn after_change(&self, breaker: &Breaker, transition: Option<&Transition>) {
        let Some(transition) = transition else {
            return;
        };
        self.published.store(publish(breaker), Ordering::Release);
        self.metrics.transition(&self.service, None, transition);
    }

    fn log(&self, transition: Option<Transition>) {
        if let Some(transition) = transition {
            log_transition(&self.service, None, &transition);
        }
    }

    /// The breaker. A panic while it was held cannot leave it half-updated in a way
    /// worse than refusing service, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

const STATE_BITS: u32 = 2;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;
const CLOSED: u64 = 0;

/// The breaker's state and generation as one word.
fn publish(breaker: &Breaker) -> u64 {
    let state = match breaker.state() {
        BreakerState::Closed => CLOSED,
        BreakerState::Open => 1,
        BreakerState::HalfOpen => 2,
    };
    breaker.generation() << STATE_BITS | state
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::time::Duration;

    use http::StatusCode;
    use prometheus_client::registry::Registry;
    use tokio::sync::Semaphore;
    use tower::ServiceExt;

    use super::*;
    use crate::core::outcome::Conditions;
    use crate::policy::circuit_breaker::FailureRate;

    const SECOND: Duration = Duration::from_secs(1);
    const MILLI: Duration = Duration::from_millis(1);

    /// A programmable upstream: answers 503 while `failing`, 200 otherwise; with a gate,
    /// each call waits for a permit before answering.
    struct Upstream {
        calls: AtomicUsize,
        failing: AtomicBool,
        /// Answers waiting for a permit, when `gated`.
        gate: Semaphore,
        gated: AtomicBool,
        /// Answer this error instead of a status, when set.
        error: Mutex<Option<fn() -> ProxyError>>,
    }

    impl Default for Upstream {
        fn default() -> Self {
            Self {
                calls: AtomicUsize::new(0),
                failing: AtomicBool::new(false),
                gate: Semaphore::new(0),
                gated: AtomicBool::new(false),
                error: Mutex::new(None),
            }
        }
    }

    impl Upstream {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        fn fail(&self, failing: bool) {
            self.failing.store(failing, Ordering::SeqCst);
        }

        fn gate(&self, gated: bool) {
            self.gated.store(gated, Ordering::SeqCst);
        }
    }

    type Inner =
        tower::util::BoxCloneSyncService<Request<ProxyBody>, Response<ProxyBody>, ProxyError>;

    fn inner(upstream: &Arc<Upstream>) -> Inner {
        let upstream = upstream.clone();
        Inner::new(tower::service_fn(move |_request: Request<ProxyBody>| {
            // Counted at call time, so a call not yet polled is counted too.
            upstream.calls.fetch_add(1, Ordering::SeqCst);
            let upstream = upstream.clone();
            async move {
                if upstream.gated.load(Ordering::SeqCst) {
                    if let Ok(permit) = upstream.gate.acquire().await {
                        permit.forget();
                    }
                }
                if let Some(error) = *upstream.error.lock().unwrap() {
                    return Err(error());
                }
                let mut response = Response::new(ProxyBody::empty());
                if upstream.failing.load(Ordering::SeqCst) {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok(response)
            }
        }))
    }

    struct Harness {
        upstream: Arc<Upstream>,
        service: ServiceBreaker<Inner>,
        handle: ServiceBreakerHandle,
        registry: Registry,
    }

    impl Harness {
        fn new(config: BreakerConfig) -> Self {
            let mut registry = Registry::with_prefix("remora");
            let metrics = BreakerMetrics::register(&mut registry);
            let layer = ServiceBreakerLayer::new("users".into(), config, metrics);
            let upstream = Arc::new(Upstream::default());
            Self {
                service: layer.layer(inner(&upstream)),
                handle: layer.handle(),
                upstream,
                registry,
            }
        }

        /// One whole call.
        async fn send(&self) -> Result<Response<ProxyBody>, ProxyError> {
            self.service.clone().oneshot(request()).await
        }

        /// Starts a call without polling it: admission happens here.
        fn start(&mut self) -> ResponseFuture<<Inner as Service<Request<ProxyBody>>>::Future> {
            // The inner service is always ready.
            self.service.call(request())
        }

        fn state(&self) -> BreakerState {
            self.handle.state()
        }

        fn opened_for(&self) -> Option<Duration> {
            self.handle.snapshot()[0].opened_for
        }

        fn metrics(&self) -> String {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
            out
        }
    }

    fn request() -> Request<ProxyBody> {
        Request::new(ProxyBody::empty())
    }

    fn gateway() -> Conditions {
        Conditions {
            gateway_error: true,
            ..Default::default()
        }
    }

    fn consecutive(failures: u32, half_open: u32) -> BreakerConfig {
        BreakerConfig::try_new(
            Some(failures),
            None,
            SECOND,
            3 * SECOND,
            half_open,
            gateway(),
        )
        .unwrap()
    }

    fn by_rate(threshold: f64, min_requests: u32) -> BreakerConfig {
        let rate = FailureRate::try_new(threshold, min_requests, 10 * SECOND).unwrap();
        BreakerConfig::try_new(None, Some(rate), SECOND, 3 * SECOND, 1, gateway()).unwrap()
    }

    fn status(result: Result<Response<ProxyBody>, ProxyError>) -> u16 {
        result.unwrap().status().as_u16()
    }

    fn is_breaker_open(result: Result<Response<ProxyBody>, ProxyError>) -> bool {
        matches!(result, Err(ProxyError::BreakerOpen(service)) if service == "users")
    }

    #[test]
    fn fits_in_a_service_stack() {
        let h = Harness::new(consecutive(1, 1));
        let _stack: crate::policy::ServiceStack = crate::policy::ServiceStack::new(h.service);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_exactly_n_consecutive_failures() {
        let h = Harness::new(consecutive(3, 1));
        h.upstream.fail(true);
        for _ in 0..2 {
            assert_eq!(status(h.send().await), 503);
            assert_eq!(h.state(), BreakerState::Closed);
        }
        assert_eq!(status(h.send().await), 503);
        assert_eq!(h.state(), BreakerState::Open);
        assert_eq!(h.upstream.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let h = Harness::new(consecutive(3, 1));
        for failing in [true, true, false, true, true] {
            h.upstream.fail(failing);
            h.send().await.unwrap();
        }
        assert_eq!(h.state(), BreakerState::Closed);
        assert_eq!(h.handle.snapshot()[0].consecutive_failures, 2);
        h.send().await.unwrap();
        assert_eq!(h.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn open_fails_fast_without_calling_the_service() {
        let h = Harness::new(consecutive(1, 1));
        h.upstream.fail(true);
        h.send().await.unwrap();
        assert_eq!(h.state(), BreakerState::Open);
        for _ in 0..5 {
            assert!(is_breaker_open(h.send().await));
        }
        assert_eq!(h.upstream.calls(), 1);
        let metrics = h.metrics();
        assert!(metrics.contains(r#"remora_breaker_rejected_total{service="users"} 5"#));
        assert!(metrics.contains(r#"remora_breaker_state{service="users",endpoint=""} 1"#));
        assert!(metrics.contains(
            r#"remora_breaker_transitions_total{service="users",endpoint="",from="closed",to="open"} 1"#
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_needs_min_requests() {
        let h = Harness::new(by_rate(0.5, 4));
        h.upstream.fail(true);
        for _ in 0..3 {
            h.send().await.unwrap();
        }
        // Three of three failed, but three calls are too few to judge.
        assert_eq!(h.state(), BreakerState::Closed);
        assert_eq!(h.handle.snapshot()[0].failure_rate, Some(1.0));
        h.send().await.unwrap();
        assert_eq!(h.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_below_threshold_stays_closed() {
        let h = Harness::new(by_rate(0.5, 4));
        for failing in [true, false, false, false, true, false] {
            h.upstream.fail(failing);
            h.send().await.unwrap();
        }
        assert_eq!(h.state(), BreakerState::Closed);
        h.upstream.fail(true);
        // 3 of 7 failed: below half.
        h.send().await.unwrap();
        assert_eq!(h.state(), BreakerState::Closed);
        // 4 of 8: at the threshold.
        h.send().await.unwrap();
        assert_eq!(h.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        // Old failures age out: three now and one ten seconds later are not four.
        let h = Harness::new(by_rate(0.5, 4));
        h.upstream.fail(true);
        for _ in 0..3 {
            h.send().await.unwrap();
        }
        tokio::time::advance(10 * SECOND).await;
        h.send().await.unwrap();
        assert_eq!(h.state(), BreakerState::Closed);
        assert_eq!(h.handle.snapshot()[0].failure_rate, Some(1.0));

        // The same within the window trips.
        let h = Harness::new(by_rate(0.5, 4));
        h.upstream.fail(true);
        for _ in 0..3 {
            h.send().await.unwrap();
        }
        tokio::time::advance(9 * SECOND).await;
        h.send().await.unwrap();
        assert_eq!(h.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_the_probes_and_their_success_closes() {
        let mut h = Harness::new(consecutive(1, 2));
        h.upstream.fail(true);
        h.send().await.unwrap();
        tokio::time::advance(SECOND - MILLI).await;
        assert!(is_breaker_open(h.send().await));
        tokio::time::advance(MILLI).await;

        h.upstream.fail(false);
        h.upstream.gate(true);
        let first = h.start();
        let second = h.start();
        assert_eq!(h.state(), BreakerState::HalfOpen);
        assert!(is_breaker_open(h.start().await));
        assert_eq!(h.upstream.calls(), 3);

        h.upstream.gate.add_permits(2);
        assert_eq!(status(first.await), 200);
        assert_eq!(h.state(), BreakerState::HalfOpen);
        assert_eq!(status(second.await), 200);
        assert_eq!(h.state(), BreakerState::Closed);
        assert_eq!(h.opened_for(), None);
        assert!(h.metrics().contains(
            r#"remora_breaker_transitions_total{service="users",endpoint="",from="half-open",to="closed"} 1"#
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_twice_as_long_up_to_the_cap() {
        let h = Harness::new(consecutive(1, 1));
        h.upstream.fail(true);
        h.send().await.unwrap();
        assert_eq!(h.opened_for(), Some(SECOND));
        tokio::time::advance(SECOND).await;

        // Open 1s, then 2s, then 3s (4s capped), then 3s again.
        for open_for in [2 * SECOND, 3 * SECOND, 3 * SECOND] {
            assert_eq!(status(h.send().await), 503, "the probe goes through");
            assert_eq!(h.state(), BreakerState::Open);
            assert_eq!(h.opened_for(), Some(open_for));
            tokio::time::advance(open_for - MILLI).await;
            assert!(is_breaker_open(h.send().await));
            tokio::time::advance(MILLI).await;
        }
        assert_eq!(h.upstream.calls(), 4);

        // A successful probe closes and resets the backoff: the next trip opens for 1s.
        h.upstream.fail(false);
        h.send().await.unwrap();
        assert_eq!(h.state(), BreakerState::Closed);
        h.upstream.fail(true);
        h.send().await.unwrap();
        assert_eq!(h.opened_for(), Some(SECOND));
        tokio::time::advance(SECOND).await;
        h.send().await.unwrap();
        assert_eq!(h.opened_for(), Some(2 * SECOND));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_gives_its_slot_back() {
        let mut h = Harness::new(consecutive(1, 1));
        h.upstream.fail(true);
        h.send().await.unwrap();
        tokio::time::advance(SECOND).await;

        h.upstream.fail(false);
        h.upstream.gate(true);
        let probe = h.start();
        assert!(is_breaker_open(h.start().await));
        drop(probe);
        assert_eq!(h.state(), BreakerState::HalfOpen);

        let probe = h.start();
        assert_eq!(h.upstream.calls(), 3);
        h.upstream.gate.add_permits(1);
        assert_eq!(status(probe.await), 200);
        assert_eq!(h.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outcome_from_before_half_open_is_not_a_probe() {
        let mut h = Harness::new(consecutive(1, 1));
        // Admitted while closed, answered (200) only when polled, after the trip.
        let slow = h.start();
        h.upstream.fail(true);
        h.send().await.unwrap();
        tokio::time::advance(SECOND).await;
        h.upstream.fail(false);
        let probe = h.start();
        assert_eq!(h.state(), BreakerState::HalfOpen);
        // `slow` succeeds, but it is no probe: the breaker stays half-open.
        assert_eq!(status(slow.await), 200);
        assert_eq!(h.state(), BreakerState::HalfOpen);
        assert_eq!(status(probe.await), 200);
        assert_eq!(h.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn no_healthy_endpoint_is_a_failure_and_remoras_own_refusals_are_not() {
        let h = Harness::new(consecutive(2, 1));
        *h.upstream.error.lock().unwrap() = Some(|| ProxyError::Overloaded("users".into()));
        for _ in 0..3 {
            assert!(h.send().await.is_err());
        }
        assert_eq!(h.state(), BreakerState::Closed);
        *h.upstream.error.lock().unwrap() = Some(|| ProxyError::NoHealthyEndpoint("users".into()));
        for _ in 0..2 {
            assert!(h.send().await.is_err());
        }
        assert_eq!(h.state(), BreakerState::Open);
    }
}
