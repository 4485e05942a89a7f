//! Fallback (degrade): a default answer instead of a failure.
//!
//! The layer sits outermost: above the rate limit, the concurrency cap, the overall
//! timeout, retries and the breaker, so it sees the final outcome of a call. When that outcome is one of the
//! configured [`Triggers`], the caller gets the configured [`FallbackAction`] instead:
//! a static answer, the answer of an alternate (degraded) service, or the last good
//! answer to the same GET. Every such answer carries `x-remora-fallback: <trigger>`;
//! any other outcome, `Err` included, passes through unchanged.
//!
//! The rate limit sits below this layer (see [`crate::policy`]), so its refusals reach
//! it as `RateLimited` and can be degraded, while the limit still counts calls, not
//! retries.

mod respond;
mod stale;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderValue;
use http::{Request, Response};
use http_body::Body;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as MetricsRegistry;
use tower::{Layer, Service, ServiceExt};

use crate::core::body::{ProxyBody, Replay};
use crate::core::error::ProxyError;
use crate::core::grpc::grpc_code;
use crate::core::labels::ServiceLabel;
use crate::policy::ServiceStack;

pub use respond::{GrpcReply, StaticResponse};
pub use stale::StaleCache;

pub use crate::core::error::FALLBACK_HEADER;

/// Most request-body bytes kept to send the request again to an alternate service.
const REPLAY_LIMIT: usize = 64 * 1024;

/// A fallback configuration that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FallbackConfigError(String);

/// An outcome a fallback can be configured to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The service's circuit breaker is open.
    BreakerOpen,
    /// The call timed out.
    Timeout,
    /// A rate limit below this layer refused the call.
    RateLimited,
    /// No endpoint could take the call.
    NoEndpoint,
    /// The service's concurrency cap shed the call.
    Overloaded,
    /// The connection to the endpoint failed.
    ConnectFailure,
    /// The upstream answered with a 5xx status.
    Upstream5xx,
    /// The upstream broke the exchange after connecting.
    UpstreamReset,
    /// The upstream answered with one of these `grpc-status` codes in its headers.
    GrpcCodes(Vec<tonic::Code>),
}

impl Trigger {
    /// The kind of outcome, as named in the header and metrics.
    pub fn kind(&self) -> TriggerKind {
        match self {
            Self::BreakerOpen => TriggerKind::BreakerOpen,
            Self::Timeout => TriggerKind::Timeout,
            Self::RateLimited => TriggerKind::RateLimited,
            Self::NoEndpoint => TriggerKind::NoEndpoint,
            Self::Overloaded => TriggerKind::Overloaded,
            Self::ConnectFailure => TriggerKind::ConnectFailure,
            Self::Upstream5xx => TriggerKind::Upstream5xx,
            Self::UpstreamReset => TriggerKind::UpstreamReset,
            Self::GrpcCodes(_) => TriggerKind::GrpcStatus,
        }
    }
}

/// The kind of a [`Trigger`], without its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerKind {
    /// See [`Trigger::BreakerOpen`].
    BreakerOpen,
    /// See [`Trigger::Timeout`].
    Timeout,
    /// See [`Trigger::RateLimited`].
    RateLimited,
    /// See [`Trigger::NoEndpoint`].
    NoEndpoint,
    /// See [`Trigger::Overloaded`].
    Overloaded,
    /// See [`Trigger::ConnectFailure`].
    ConnectFailure,
    /// See [`Trigger::Upstream5xx`].
    Upstream5xx,
    /// See [`Trigger::UpstreamReset`].
    UpstreamReset,
    /// See [`Trigger::GrpcCodes`].
    GrpcStatus,
}

impl TriggerKind {
    /// The stable name in `x-remora-fallback` and the `trigger` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BreakerOpen => "breaker_open",
            Self::Timeout => "timeout",
            Self::RateLimited => "rate_limited",
            Self::NoEndpoint => "no_endpoint",
            Self::Overloaded => "overloaded",
            Self::ConnectFailure => "connect_failure",
            Self::Upstream5xx => "5xx",
            Self::UpstreamReset => "reset",
            Self::GrpcStatus => "grpc_status",
        }
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// The set of outcomes a fallback replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Triggers {
    /// One bit per [`TriggerKind`].
    kinds: u16,
    /// The codes of every `GrpcCodes` trigger.
    grpc_codes: Vec<tonic::Code>,
}

impl FromIterator<Trigger> for Triggers {
    fn from_iter<I: IntoIterator<Item = Trigger>>(triggers: I) -> Self {
        let mut set = Self::default();
        for trigger in triggers {
            set.kinds |= trigger.kind().bit();
            if let Trigger::GrpcCodes(codes) = trigger {
                set.grpc_codes.extend(codes);
            }
        }
        set
    }
}

impl Triggers {
    /// Whether the set holds `kind`.
    pub fn contains(&self, kind: TriggerKind) -> bool {
        self.kinds & kind.bit() != 0
    }

    /// The trigger `result` fires, if it is in the set.
    pub fn classify(
        &self,
        result: &Result<Response<ProxyBody>, ProxyError>,
    ) -> Option<TriggerKind> {
        let kind = match result {
            Err(error) => match error {
                ProxyError::BreakerOpen(_) => TriggerKind::BreakerOpen,
                ProxyError::Timeout(_) => TriggerKind::Timeout,
                ProxyError::RateLimited { .. } => TriggerKind::RateLimited,
                ProxyError::NoHealthyEndpoint(_) => TriggerKind::NoEndpoint,
                ProxyError::Overloaded(_) => TriggerKind::Overloaded,
                ProxyError::Connect { .. } => TriggerKind::ConnectFailure,
                ProxyError::Upstream { .. } => TriggerKind::UpstreamReset,
                // An injected abort rehearses an upstream failure, so it degrades like one.
                ProxyError::FaultInjected(status) if status.is_server_error() => {
                    TriggerKind::Upstream5xx
                }
                _ => return None,
            },
            Ok(response) if response.status().is_server_error() => TriggerKind::Upstream5xx,
            Ok(response) => {
                if self.grpc_codes.is_empty() {
                    return None;
                }
                let code = grpc_code(response)?;
                if !self.grpc_codes.contains(&code) {
                    return None;
                }
                TriggerKind::GrpcStatus
            }
        };
        self.contains(kind).then_some(kind)
    }
}

/// What the caller gets when a trigger fires.
#[derive(Debug, Clone)]
pub enum FallbackAction {
    /// A fixed answer.
    Respond(StaticResponse),
    /// The answer of an alternate (degraded) service's stack, when the request body
    /// can be sent again: the primary read all of it within 64 KiB, or let go of it
    /// having read at most that much (an open breaker, a refused connection).
    ForwardTo(ServiceStack),
    /// For GET, the last good answer to the same target, while fresh enough.
    Stale(StaleCache),
}

impl FallbackAction {
    /// The `action` metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Respond(_) => "respond",
            Self::ForwardTo(_) => "forward",
            Self::Stale(_) => "stale",
        }
    }
}

/// A service's (or route's) fallback: on these triggers, this action.
#[derive(Debug, Clone)]
pub struct FallbackConfig {
    on: Triggers,
    action: FallbackAction,
}

impl FallbackConfig {
    /// A fallback taking `action` on the outcomes in `on`.
    pub fn try_new(on: Triggers, action: FallbackAction) -> Result<Self, FallbackConfigError> {
        if on.kinds == 0 {
            return Err(FallbackConfigError(
                "fallback needs at least one trigger".into(),
            ));
        }
        if on.contains(TriggerKind::GrpcStatus) && on.grpc_codes.is_empty() {
            return Err(FallbackConfigError(
                "fallback trigger grpc_status needs at least one gRPC code".into(),
            ));
        }
        if on.grpc_codes.contains(&tonic::Code::Ok) {
            return Err(FallbackConfigError(
                "fallback trigger grpc_status cannot include OK (code 0): it is success".into(),
            ));
        }
        Ok(Self { on, action })
    }
}

/// Labels of served fallbacks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FallbackLabels {
    /// The service whose call was replaced.
    pub service: ServiceLabel,
    /// Which trigger fired ([`TriggerKind::as_str`]).
    pub trigger: &'static str,
    /// `respond`, `forward` or `stale`.
    pub action: &'static str,
}

/// Labels of triggers that found no fallback to serve.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UnservedLabels {
    /// The service whose call failed.
    pub service: ServiceLabel,
    /// `forward` or `stale`.
    pub action: &'static str,
}

/// Fallback metrics.
#[derive(Debug, Clone, Default)]
pub struct FallbackMetrics {
    /// Fallback answers served, by service, trigger and action.
    served: Family<FallbackLabels, Counter>,
    /// Triggers that could not be served: a stale miss (nothing fresh cached), a body
    /// that could not be replayed, or an alternate that failed too.
    unserved: Family<UnservedLabels, Counter>,
}

impl FallbackMetrics {
    /// Registers the fallback metrics in `registry`.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let metrics = Self::default();
        registry.register(
            "fallbacks",
            "Fallback answers served in place of a failed call, by service, trigger and action",
            metrics.served.clone(),
        );
        registry.register(
            "fallback_unserved",
            "Fallback triggers that had nothing to serve (stale miss, body not replayable, \
             alternate failed), by service and action",
            metrics.unserved.clone(),
        );
        metrics
    }
}

/// Applies a [`FallbackConfig`] to a service's stack.
#[derive(Debug, Clone)]
pub struct FallbackLayer {
    policy: Arc<Policy>,
}

/// What every clone of the service shares.
#[derive(Debug)]
struct Policy {
    service: ServiceLabel,
    config: FallbackConfig,
    metrics: FallbackMetrics,
}

impl FallbackLayer {
    /// The fallback of `service`.
    pub fn new(service: Arc<str>, config: FallbackConfig, metrics: FallbackMetrics) -> Self {
        Self {
            policy: Arc::new(Policy {
                service: ServiceLabel(service),
                config,
                metrics,
            }),
        }
    }
}

impl<S> Layer<S> for FallbackLayer {
    type Service = Fallback<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The fallback service: calls `inner`, replaces the outcomes its policy names.
#[derive(Debug, Clone)]
pub struct Fallback<S> {
    inner: S,
    policy: Arc<Policy>,
}

/// What a request needs kept for its fallback, decided before the call. It lives in every
/// call's future, so the rare large variant is boxed: an alternate service's copy of the
/// request costs its calls one allocation, and every other call a smaller future.
enum Prepared {
    Respond {
        grpc: bool,
    },
    ForwardTo(Box<Alternate>),
    /// The cache key; `None` for requests whose answers are not cached (not GET, or
    /// carrying credentials): those pass through.
    Stale(Option<String>),
}

/// The request again, for the alternate service.
struct Alternate {
    parts: http::request::Parts,
    /// `None`: the request had no body.
    replay: Option<Replay>,
}

impl Alternate {
    /// The request, if its body can be sent again now that the primary has answered.
    fn request(self: Box<Self>) -> Option<Request<ProxyBody>> {
        let Self { parts, replay } = *self;
        let body = match replay {
            None => ProxyBody::empty(),
            Some(replay) => replay.try_body()?,
        };
        Some(Request::from_parts(parts, body))
    }
}

impl<S> Service<Request<ProxyBody>> for Fallback<S>
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
    fn call(&mut self, mut request: Request<ProxyBody>) -> Self::Future {
        let prepared = prepare(&self.policy.config.action, &mut request);
        ResponseFuture {
            state: State::Calling {
                inner: self.inner.call(request),
                policy: self.policy.clone(),
                prepared: Some(prepared),
            },
        }
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send>>;

pin_project_lite::pin_project! {
    /// The response future of [`Fallback`]: the call, then (only when an alternate
    /// service must be asked) that second call.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            inner: F,
            policy: Arc<Policy>,
            prepared: Option<Prepared>,
        },
        Asking {
            answer: Answer,
        },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Calling {
                    inner,
                    policy,
                    prepared,
                } => {
                    let result = std::task::ready!(inner.poll(cx));
                    let trigger = policy.config.on.classify(&result);
                    // The common outcome, a call that needs no fallback, passes through
                    // untouched (a stale cache still records a good answer).
                    if trigger.is_none() && !matches!(prepared, Some(Prepared::Stale(Some(_)))) {
                        return Poll::Ready(result);
                    }
                    let Some(prepared) = prepared.take() else {
                        return Poll::Ready(result);
                    };
                    match Policy::settle(policy, result, prepared, trigger) {
                        Settled::Now(result) => return Poll::Ready(result),
                        Settled::Ask(answer) => {
                            self.as_mut().project().state.set(State::Asking { answer })
                        }
                    }
                }
                StateProj::Asking { answer } => return answer.as_mut().poll(cx),
            }
        }
    }
}

/// What the caller gets: an answer now, or the alternate service's answer.
// NOTE: a return value that lives for one poll; boxing the common variant would cost
// every call an allocation.
#[allow(clippy::large_enum_variant)]
enum Settled {
    Now(Result<Response<ProxyBody>, ProxyError>),
    Ask(Answer),
}

/// What `request` needs kept for its fallback; for an alternate service, a copy of it
/// (and of its body, recorded as the primary reads it).
fn prepare(action: &FallbackAction, request: &mut Request<ProxyBody>) -> Prepared {
    match action {
        FallbackAction::Respond(_) => Prepared::Respond {
            grpc: crate::core::grpc::speaks_grpc(request),
        },
        FallbackAction::Stale(_) => Prepared::Stale(stale::cache_key(request)),
        FallbackAction::ForwardTo(_) => {
            let taken = std::mem::replace(request, Request::new(ProxyBody::empty()));
            let (parts, body) = taken.into_parts();
            let copy = parts.clone();
            let (body, replay) = if body.is_end_stream() {
                (body, None)
            } else {
                let (body, replay) = Replay::wrap(body, REPLAY_LIMIT);
                (body, Some(replay))
            };
            *request = Request::from_parts(parts, body);
            Prepared::ForwardTo(Box::new(Alternate {
                parts: copy,
                replay,
            }))
        }
    }
}

impl Policy {
    /// The caller's answer, given the call's outcome.
    fn settle(
        policy: &Arc<Self>,
        result: Result<Response<ProxyBody>, ProxyError>,
        prepared: Prepared,
        trigger: Option<TriggerKind>,
    ) -> Settled {
        let now = match (&policy.config.action, prepared) {
            (FallbackAction::Respond(reply), Prepared::Respond { grpc }) => match trigger {
                None => result,
                Some(trigger) => Ok(policy.served(trigger, reply.to_response(grpc))),
            },
            (FallbackAction::Stale(cache), Prepared::Stale(Some(key))) => match trigger {
                None => result.map(|response| cache.record(key, response)),
                Some(trigger) => match cache.lookup(&key) {
                    Some(response) => Ok(policy.served(trigger, response)),
                    None => policy.unserved(result),
                },
            },
            (FallbackAction::ForwardTo(stack), Prepared::ForwardTo(alternate)) => {
                let Some(trigger) = trigger else {
                    return Settled::Now(result);
                };
                // The primary's outcome is in: its request, and the body, are released.
                let Some(request) = alternate.request() else {
                    return Settled::Now(policy.unserved(result));
                };
                let call = stack.clone().oneshot(request);
                let policy = policy.clone();
                return Settled::Ask(Box::pin(async move {
                    match call.await {
                        Ok(response) => Ok(policy.served(trigger, response)),
                        Err(_) => policy.unserved(result),
                    }
                }));
            }
            _ => result,
        };
        Settled::Now(now)
    }

    /// Marks and counts a fallback answer.
    fn served(
        &self,
        trigger: TriggerKind,
        mut response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        response.headers_mut().insert(
            FALLBACK_HEADER.clone(),
            HeaderValue::from_static(trigger.as_str()),
        );
        self.metrics
            .served
            .get_or_create(&FallbackLabels {
                service: self.service.clone(),
                trigger: trigger.as_str(),
                action: self.config.action.as_str(),
            })
            .inc();
        response
    }

    /// Counts a trigger with nothing to serve; the caller gets the original outcome.
    fn unserved(
        &self,
        result: Result<Response<ProxyBody>, ProxyError>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        self.metrics
            .unserved
            .get_or_create(&UnservedLabels {
                service: self.service.clone(),
                action: self.config.action.as_str(),
            })
            .inc();
        result
    }
}

#[cfg(test)]
mod tests;
