//! The response future of [`Retry`](super::Retry): the attempt in flight, in place, and,
//! for a call that may be retried or whose attempts are bounded, what the next attempt
//! needs, in one box.
//!
//! A retried call goes round: attempt, decision, backoff, readiness of the service
//! below, next attempt. Every attempt's future takes the place of the one before (they
//! are of one type), so a retry allocates nothing but its request; a call that is never
//! retried and has no per-try bound keeps nothing at all.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::decide::failed_endpoint;
use super::layer::Shared;
use super::resend::Resend;
use crate::core::body::ProxyBody;
use crate::core::call::{AvoidEndpoints, TryExpiry};
use crate::core::error::ProxyError;

pin_project! {
    /// The response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, F> {
        // The attempt in flight; `None` between attempts.
        #[pin]
        attempt: Option<F>,
        // What the call's next attempt needs; `None` for a call sent once and unbounded,
        // and once the call is over (so that its body's recording goes at once).
        retry: Option<Pin<Box<Retrying<S>>>>,
    }
}

impl<S, F> ResponseFuture<S, F> {
    /// A call sent once, with no per-try bound.
    pub(super) fn alone(attempt: F) -> Self {
        Self {
            attempt: Some(attempt),
            retry: None,
        }
    }

    /// A call whose first attempt is `attempt` and whose retries `retry` prepares.
    pub(super) fn retrying(attempt: F, retry: Pin<Box<Retrying<S>>>) -> Self {
        Self {
            attempt: Some(attempt),
            retry: Some(retry),
        }
    }
}

impl<S> Future for ResponseFuture<S, S::Future>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(attempt) = this.attempt.as_mut().as_pin_mut() {
                let result = match attempt.poll(cx) {
                    Poll::Ready(result) => result,
                    Poll::Pending => {
                        let Some(retry) = this.retry.as_mut() else {
                            return Poll::Pending;
                        };
                        if !retry.as_mut().per_try_expired(cx) {
                            return Poll::Pending;
                        }
                        Err(retry.shared.per_try_expired())
                    }
                };
                // Over (or cut short by its per-try bound): the attempt goes.
                this.attempt.set(None);
                let Some(retry) = this.retry.as_mut() else {
                    return Poll::Ready(result);
                };
                if let Some(result) = retry.as_mut().after(result) {
                    *this.retry = None;
                    return Poll::Ready(result);
                }
            }
            let Some(retry) = this.retry.as_mut() else {
                // Polled after it completed.
                return Poll::Pending;
            };
            match ready!(retry.as_mut().poll_next(cx)) {
                Ok(attempt) => this.attempt.set(Some(attempt)),
                Err(error) => {
                    *this.retry = None;
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}

pin_project! {
    /// What a call keeps for its next attempt.
    pub(super) struct Retrying<S> {
        // The per-try bound while an attempt is in flight; the backoff between attempts.
        // Made when first needed: a call answered at its first attempt makes none.
        #[pin]
        timer: Option<Sleep>,
        phase: Phase,
        shared: Arc<Shared>,
        // The service below, ready for the first attempt, made ready again for each retry.
        inner: S,
        resend: Resend,
        // When the call must be answered, as the timeout layer above set it.
        deadline: Option<Instant>,
        // Endpoints earlier attempts failed on.
        avoid: Vec<SocketAddr>,
        // The number of the last attempt sent.
        attempt: u32,
        // The next attempt's request, between a decision and its sending.
        next: Option<Request<ProxyBody>>,
        // The attempt in flight's per-try expiry mark (with a per-try timeout only).
        expiry: Option<TryExpiry>,
    }
}

/// Where a call is between two attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// An attempt is in flight.
    Sending,
    /// Waiting for the backoff to pass.
    BackingOff,
    /// Waiting for the service below to be ready.
    Readying,
}

impl<S> Retrying<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
{
    /// A call about to send its first attempt.
    pub(super) fn new(
        shared: Arc<Shared>,
        inner: S,
        resend: Resend,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            timer: None,
            phase: Phase::Sending,
            shared,
            inner,
            resend,
            deadline,
            avoid: Vec::new(),
            attempt: 0,
            next: None,
            expiry: None,
        }
    }

    /// Sends the call's next attempt, `request`, bounded by the per-try timeout.
    pub(super) fn send(self: Pin<&mut Self>, mut request: Request<ProxyBody>) -> S::Future {
        let this = self.project();
        *this.attempt += 1;
        *this.phase = Phase::Sending;
        if let Some(limit) = this.shared.config.per_try_timeout {
            arm(this.timer, Instant::now() + limit);
            let expiry = TryExpiry::default();
            request.extensions_mut().insert(expiry.clone());
            *this.expiry = Some(expiry);
        }
        this.shared.send(this.inner, request, *this.attempt)
    }

    /// Whether the attempt in flight ran past its per-try bound; if so it is marked
    /// expired, so that the layers below count it as a timeout when it is dropped.
    fn per_try_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        let this = self.project();
        let expired = this.shared.config.per_try_timeout.is_some()
            && this
                .timer
                .as_pin_mut()
                .is_some_and(|timer| timer.poll(cx).is_ready());
        if expired {
            if let Some(expiry) = this.expiry.take() {
                expiry.expire();
            }
        }
        expired
    }

    /// After the last attempt ended with `result`: `Some(result)` when the call is over,
    /// else `None` with the next attempt prepared and its backoff started.
    fn after(
        self: Pin<&mut Self>,
        mut result: Result<Response<ProxyBody>, ProxyError>,
    ) -> Option<Result<Response<ProxyBody>, ProxyError>> {
        let this = self.project();
        let Some((delay, next)) =
            this.shared
                .next_attempt(this.resend, &mut result, *this.attempt, *this.deadline)
        else {
            return Some(result);
        };
        if let Some(endpoint) = failed_endpoint(&result) {
            if !this.avoid.contains(&endpoint) {
                this.avoid.push(endpoint);
            }
        }
        // A retried response's body is dropped unread.
        drop(result);
        *this.next = Some(next);
        *this.phase = Phase::BackingOff;
        arm(this.timer, Instant::now() + delay);
        None
    }

    /// The next attempt, once the backoff passed and the service below is ready.
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Future, ProxyError>> {
        let this = self.as_mut().project();
        if *this.phase == Phase::BackingOff {
            if let Some(timer) = this.timer.as_pin_mut() {
                ready!(timer.poll(cx));
            }
            *this.phase = Phase::Readying;
        }
        ready!(this.inner.poll_ready(cx))?;
        let Some(mut next) = this.next.take() else {
            // Nothing prepared: polled after the call ended.
            return Poll::Pending;
        };
        next.extensions_mut()
            .insert(AvoidEndpoints(this.avoid.clone()));
        Poll::Ready(Ok(self.send(next)))
    }
}

/// Sets `timer` to fire at `deadline`, making it the first time.
fn arm(mut timer: Pin<&mut Option<Sleep>>, deadline: Instant) {
    match timer.as_mut().as_pin_mut() {
        Some(sleep) => sleep.reset(deadline),
        None => timer.set(Some(tokio::time::sleep_until(deadline))),
    }
}
