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
use crate::core::call::TryExpiry;
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
        let Some(mut permit) = self.shared.admit() else {
            self.shared.rejected.inc();
            return ResponseFuture {
                inner: Inner::Refused {
                    service: self.shared.service.clone(),
                },
            };
        };
        permit.expiry = request.extensions().get::<TryExpiry>().cloned();
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

/// A call's leave to go through; dropped without an outcome, it gives a probe slot back,
/// or records a timeout when a per-try timeout cut the call short.
#[derive(Debug)]
struct Permit {
    shared: Arc<Shared>,
    /// `None` once the outcome is recorded.
    ticket: Option<Ticket>,
    /// Set when the retry layer above bounds the try: tells a per-try timeout from a
    /// caller that went away.
    expiry: Option<TryExpiry>,
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
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        if self.expiry.as_ref().is_some_and(TryExpiry::expired) {
            // `try_timeout` in `failure_on`: the try ran out of its per-try timeout.
            let timeout = Err(ProxyError::Timeout(std::time::Duration::ZERO));
            let failed = self.shared.config.failure_on().matches(&timeout);
            self.shared.record(ticket, failed);
        } else if ticket.is_probe() {
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
                expiry: None,
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
            expiry: None,
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
mod tests;
