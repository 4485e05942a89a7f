//! The retry service: each call's first attempt, and what its retries will need.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderValue;
use http::{Request, Response};
use tokio::time::Instant;
use tower::Service;

use super::future::{ResponseFuture, Retrying};
use super::layer::Shared;
use super::resend::Resend;
use super::ATTEMPT_HEADER;
use crate::core::body::ProxyBody;
use crate::core::call::CallInfo;
use crate::core::error::ProxyError;

/// The service [`RetryLayer`](super::RetryLayer) makes.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Retry<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

/// How a call may be sent again, decided from its method alone.
enum Sends {
    /// Once.
    Once,
    /// Again only when its connection failed and `Forward` gave it back unsent.
    AgainIfUnsent,
    /// Again after any failure the config names.
    Again,
}

impl<S> Service<Request<ProxyBody>> for Retry<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ResponseFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut request: Request<ProxyBody>) -> Self::Future {
        let shared = &self.shared;
        let config = &shared.config;
        let sends = if config.max_attempts == 1 {
            Sends::Once
        } else if config.method_retryable(request.method()) {
            Sends::Again
        } else if config.conditions.connect_failure {
            Sends::AgainIfUnsent
        } else {
            Sends::Once
        };
        // One look at the extensions serves the budget, the deadline and the copy.
        let call = request.extensions().get::<CallInfo>().cloned();
        let arrived = call.as_ref().map_or_else(Instant::now, |call| call.arrived);
        config.budget.deposit_at(arrived);
        if matches!(sends, Sends::Once) && config.per_try_timeout.is_none() {
            // Never sent again, never bounded here: nothing to keep.
            let attempt = shared.send(&mut self.inner, request, 1);
            return ResponseFuture::alone(attempt);
        }
        let deadline = call.as_ref().and_then(|call| call.deadline);
        let resend = match sends {
            Sends::Once => Resend::Never,
            Sends::AgainIfUnsent => Resend::Unsent,
            Sends::Again => Resend::copy(&mut request, call, config.max_replay_bytes),
        };
        // The ready service takes the call; the clone left behind is made ready again.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let mut retrying = Box::pin(Retrying::new(shared.clone(), inner, resend, deadline));
        let attempt = retrying.as_mut().send(request);
        ResponseFuture::retrying(attempt, retrying)
    }
}

impl Shared {
    /// Sends attempt number `n` (1-based) of a call: every attempt goes out here, tagged
    /// and counted.
    pub(super) fn send<S>(
        &self,
        inner: &mut S,
        mut request: Request<ProxyBody>,
        n: u32,
    ) -> S::Future
    where
        S: Service<Request<ProxyBody>>,
    {
        request
            .headers_mut()
            .insert(&ATTEMPT_HEADER, attempt_value(n));
        if n == 1 {
            self.counters.first.inc();
        } else {
            self.counters.retry.inc();
        }
        inner.call(request)
    }
}

/// Attempt number `n` as a header value: a static one (no allocation) for every attempt
/// count a policy allows in practice.
pub(super) fn attempt_value(n: u32) -> HeaderValue {
    const SMALL: [&str; 9] = ["1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match usize::try_from(n)
        .ok()
        .and_then(|n| SMALL.get(n.wrapping_sub(1)))
    {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(n),
    }
}
