//! The rate-limited service: a call passes the limiter, or fails at once.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{self, BoxFuture, Either, Ready};
use governor::clock::{Clock, DefaultClock};
use http::{Request, Response};
use tower::Service;

use super::layer::{Limiter, Shared};
use super::shared::{FirstLook, SharedLimiter};
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
    C: Clock + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    /// A local decision answers at once; one that asks Redis is boxed (its cost is the
    /// round trip's, not the allocation's).
    type Future = Either<
        Either<Ready<Result<Response<ProxyBody>, ProxyError>>, S::Future>,
        BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        let decision = match &self.shared.limiter {
            Limiter::Shared(limiter) => match limiter.first_look(&request) {
                FirstLook::Decided(decision) => decision,
                FirstLook::Ask(key) => {
                    let limiter = limiter.clone();
                    return Either::Right(self.ask_redis(limiter, key, request));
                }
            },
            local => local.admit(&request),
        };
        match decision {
            Ok(()) => Either::Left(Either::Right(self.inner.call(request))),
            Err(retry_after) => {
                self.shared.limited.inc();
                Either::Left(Either::Left(future::ready(Err(ProxyError::RateLimited {
                    retry_after,
                }))))
            }
        }
    }
}

impl<S, C> RateLimit<S, C>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    C: Clock + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    /// Waits for Redis's decision on `key`, then calls the inner service (the one made
    /// ready; a clone stays for the next call).
    fn ask_redis(
        &mut self,
        limiter: Arc<SharedLimiter<C>>,
        key: String,
        request: Request<ProxyBody>,
    ) -> BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>> {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limited = self.shared.limited.clone();
        Box::pin(async move {
            match limiter.ask(key, &request).await {
                Ok(()) => inner.call(request).await,
                Err(retry_after) => {
                    limited.inc();
                    Err(ProxyError::RateLimited { retry_after })
                }
            }
        })
    }
}
