//! The rate-limited service: a call passes the limiter, or fails at once.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use governor::clock::{Clock, DefaultClock};
use http::{Request, Response};
use tower::Service;

use super::layer::Shared;
use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;

/// A service whose calls pass a rate limit first.
pub struct RateLimit<S, C: Clock = DefaultClock> {
    pub(super) inner: S,
    pub(super) shared: Arc<Shared<C>>,
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
