//! Retries failed attempts of a call, within a budget, after a backoff.
//!
//! Sits below the overall timeout and above the service breaker and the balancer: each
//! attempt goes through the balancer again, asking it to avoid the endpoints that already
//! failed ([`AvoidEndpoints`]). A call is retried only when
//! - its method is idempotent (or the config allows any method); a call of another
//!   method is still retried when its connection failed (the request never left), and
//!   then `Forward` gives the unsent request back in its error ([`Unsent`]): it is never
//!   copied, and its body streams whatever its size,
//! - its body can be replayed: it is empty, or the attempt before read all of it within
//!   `max_replay_bytes` or let go of it having read no more (a [`Replay`] records what
//!   an attempt sends; a body known to be larger is not recorded and is sent once),
//! - the result is a failure the config's [`Conditions`] name,
//! - attempts remain, the server did not refuse (`grpc-retry-pushback-ms` negative or
//!   malformed), the call's [`Deadline`] leaves time for the wait, and the shared
//!   [`RetryBudget`] allows it.
//!
//! Decisions are made when response headers arrive; a response is never retried once its
//! body is being relayed. So a streaming gRPC call is retried only before its response
//! headers arrived, by construction.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Extensions, HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt as _};

use super::backoff::Backoff;
use super::budget::RetryBudget;
use super::timeout::{TimeoutKind, TimeoutMetrics};
use crate::core::body::{ProxyBody, Replay};
use crate::core::call::{deadline_of, AvoidEndpoints, CallInfo, Deadline, EndpointUsed};
use crate::core::error::{ProxyError, Unsent};
use crate::core::labels::{register_per_service, ByService, PerService, ServiceLabel};
use crate::core::outcome::Conditions;
use crate::trace::CallTrace;

/// Header telling the upstream which attempt (1-based) of the call this is.
pub static ATTEMPT_HEADER: HeaderName = HeaderName::from_static("x-remora-attempt");

/// gRPC server pushback (the gRPC retry design, A6): milliseconds to wait before
/// retrying; negative or malformed means "do not retry".
static GRPC_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// A rejected retry configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry config: {0}")]
pub struct InvalidRetryConfig(&'static str);

/// When and how a service's calls are retried. Built by [`RetryConfig::try_new`] and
/// its `with_*` methods, which validate; the request path trusts it.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Attempts in total, the first included; `>= 1`.
    max_attempts: u32,
    /// The results that are retried.
    conditions: Conditions,
    /// Bound on each attempt (`ProxyError::Timeout`, a `timeout` condition); non-zero.
    per_try_timeout: Option<Duration>,
    /// Wait between attempts; also caps a server's `Retry-After` / pushback.
    backoff: Backoff,
    /// Shared by every clone of the layer built from this config.
    budget: Arc<RetryBudget>,
    /// Whether POST, PATCH, CONNECT (and unknown methods) are retried too.
    retry_non_idempotent: bool,
    /// Largest request body kept for replay; `<= MAX_REPLAY_LIMIT`.
    max_replay_bytes: usize,
}

/// Upper bound on `max_replay_bytes`: replay buffers are per request, in memory.
const MAX_REPLAY_LIMIT: usize = 16 * 1024 * 1024;

impl RetryConfig {
    /// Default bound on a replayable request body.
    pub const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;

    /// Up to `max_attempts` attempts (the first included) of idempotent calls whose
    /// result matches `conditions`; no per-try timeout, 64 KiB replay bound.
    pub fn try_new(
        max_attempts: u32,
        conditions: Conditions,
        backoff: Backoff,
        budget: Arc<RetryBudget>,
    ) -> Result<Self, InvalidRetryConfig> {
        if max_attempts == 0 {
            return Err(InvalidRetryConfig(
                "max_attempts must be at least 1 (it counts the first attempt)",
            ));
        }
        if max_attempts > 100 {
            return Err(InvalidRetryConfig("max_attempts must be at most 100"));
        }
        Ok(Self {
            max_attempts,
            conditions,
            per_try_timeout: None,
            backoff,
            budget,
            retry_non_idempotent: false,
            max_replay_bytes: Self::DEFAULT_MAX_REPLAY_BYTES,
        })
    }

    /// Bounds each attempt by `timeout`.
    pub fn with_per_try_timeout(
        mut self,
        timeout: Option<Duration>,
    ) -> Result<Self, InvalidRetryConfig> {
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(InvalidRetryConfig("per_try_timeout must be non-zero"));
        }
        self.per_try_timeout = timeout;
        Ok(self)
    }

    /// Retries every method, not only GET, HEAD, OPTIONS, PUT, DELETE and TRACE.
    pub fn with_retry_non_idempotent(mut self, retry: bool) -> Self {
        self.retry_non_idempotent = retry;
        self
    }

    /// Keeps request bodies of up to `bytes` for replay.
    pub fn with_max_replay_bytes(mut self, bytes: usize) -> Result<Self, InvalidRetryConfig> {
        if bytes > MAX_REPLAY_LIMIT {
            return Err(InvalidRetryConfig(
                "max_replay_bytes must be at most 16 MiB",
            ));
        }
        self.max_replay_bytes = bytes;
        Ok(self)
    }
}

/// First attempt or retry, as a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptKind {
    /// The call's first attempt.
    First,
    /// Any later attempt.
    Retry,
}

impl EncodeLabelValue for AttemptKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(match self {
            Self::First => "first",
            Self::Retry => "retry",
        })
    }
}

/// Labels of the attempt counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AttemptLabels {
    /// The service called.
    pub service: ServiceLabel,
    /// First attempt or retry.
    pub attempt: AttemptKind,
}

/// Retry's counters.
#[derive(Debug, Clone, Default)]
pub struct RetryMetrics {
    /// `remora_retry_attempts_total{service, attempt}`: attempts sent.
    attempts: Family<AttemptLabels, Counter>,
    /// `remora_retries_total{service}`: decisions to retry.
    retries: PerService<Counter>,
    /// `remora_retry_budget_exhausted_total{service}`: retries refused by the budget.
    budget_exhausted: PerService<Counter>,
    /// `remora_retry_not_replayable_total{service}`: retries given up for the body.
    not_replayable: PerService<Counter>,
}

impl RetryMetrics {
    /// Registers retry's counters.
    pub fn register(registry: &mut Registry) -> Self {
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "retry_attempts",
            "Attempts sent upstream, by service and whether first or retry",
            attempts.clone(),
        );
        Self {
            attempts,
            retries: register_per_service(registry, "retries", "Failed attempts that were retried"),
            budget_exhausted: register_per_service(
                registry,
                "retry_budget_exhausted",
                "Failed attempts not retried because the retry budget was spent",
            ),
            not_replayable: register_per_service(
                registry,
                "retry_not_replayable",
                "Failed attempts not retried because the request body could not be replayed",
            ),
        }
    }

    /// `service`'s counter handles, looked up once per layer rather than per call.
    fn of(&self, service: &Arc<str>) -> RetryCounters {
        let attempts = |attempt| {
            self.attempts
                .get_or_create(&AttemptLabels {
                    service: ServiceLabel(service.clone()),
                    attempt,
                })
                .clone()
        };
        let first = attempts(AttemptKind::First);
        let retry = attempts(AttemptKind::Retry);
        let labels = ByService::of(service);
        let retries = self.retries.get_or_create(&labels).clone();
        let budget_exhausted = self.budget_exhausted.get_or_create(&labels).clone();
        let not_replayable = self.not_replayable.get_or_create(&labels).clone();
        RetryCounters {
            first,
            retry,
            retries,
            budget_exhausted,
            not_replayable,
        }
    }
}

/// One service's retry counters.
#[derive(Debug)]
struct RetryCounters {
    first: Counter,
    retry: Counter,
    retries: Counter,
    budget_exhausted: Counter,
    not_replayable: Counter,
}

/// Retries a service's failed attempts.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

/// What every clone of the layer and its services share.
#[derive(Debug)]
struct Shared {
    config: RetryConfig,
    service: Arc<str>,
    counters: RetryCounters,
    /// Counts per-try timeouts when set.
    timeout_metrics: Option<TimeoutMetrics>,
    /// Whether the budget last refused a retry (to log transitions once).
    exhausted: AtomicBool,
}

impl RetryLayer {
    /// A layer retrying `service`'s calls per `config`.
    pub fn new(config: RetryConfig, service: Arc<str>, metrics: RetryMetrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                counters: metrics.of(&service),
                config,
                service,
                timeout_metrics: None,
                exhausted: AtomicBool::new(false),
            }),
        }
    }

    /// Counts per-try timeouts as `remora_timeouts_total{kind="per_try"}`.
    pub fn with_timeout_metrics(mut self, metrics: TimeoutMetrics) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.timeout_metrics = Some(metrics),
            None => tracing::warn!("retry layer already shared; per-try timeouts are not counted"),
        }
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`RetryLayer`] makes.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send>>;

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
        // The ready service takes the call; the clone left behind is made ready again.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = &self.shared;
        let idempotent = shared.method_retryable(request.method());
        let retries = shared.config.max_attempts > 1;
        // A call whose method may not be repeated is retried only when its connection
        // failed: `Forward` then gives the unsent request back, so nothing is copied.
        // A bodiless call (most GETs) needs nothing read ahead. Either way the first
        // attempt is sent from here, and only a retry, if one is needed, takes an
        // allocated future.
        let unsent = retries && !idempotent && shared.config.conditions.connect_failure;
        if !(unsent || retries && idempotent && request.body().is_end_stream()) {
            return ResponseFuture::Boxed {
                future: Box::pin(shared.clone().run(inner, request)),
            };
        }
        // One look at the extensions serves the budget, the deadline and the copy.
        let extensions = KeptExtensions::of(request.extensions());
        shared.config.budget.deposit_at(extensions.arrival());
        let deadline = extensions.deadline();
        let avoid = match &extensions {
            KeptExtensions::Known { .. } => None,
            KeptExtensions::All(all) => all.get::<AvoidEndpoints>().map(|a| a.0.clone()),
        };
        let resend = if unsent {
            Resend::Unsent
        } else {
            Resend::Copy {
                template: Template::of(&request, extensions),
                body: None,
            }
        };
        shared.prepare_attempt(&mut request, 1);
        let limit = shared.config.per_try_timeout;
        ResponseFuture::First {
            call: inner.call(request),
            per_try: limit.map(|limit| Box::pin(tokio::time::sleep(limit))),
            retry: Some(Box::new(Continuation {
                shared: shared.clone(),
                inner,
                resend,
                deadline,
                avoid: avoid.unwrap_or_default(),
            })),
        }
    }
}

/// What a call keeps from its first attempt, in case it is retried.
struct Continuation<S> {
    shared: Arc<Shared>,
    inner: S,
    resend: Resend,
    deadline: Option<Instant>,
    avoid: Vec<SocketAddr>,
}

pin_project_lite::pin_project! {
    /// The response future of [`Retry`]: a bodiless call's first attempt in place, or
    /// (with a body to read ahead, or once a retry is needed) the whole call boxed.
    ///
    /// A first attempt keeps what a retry needs, and its per-try timer, boxed: they are
    /// large (the request's head) and seldom used, and this future is part of every
    /// call's; a retried call's future is boxed anyway.
    #[project = ResponseProj]
    pub enum ResponseFuture<S, F> {
        First {
            #[pin]
            call: F,
            per_try: Option<Pin<Box<tokio::time::Sleep>>>,
            retry: Option<Box<Continuation<S>>>,
        },
        Boxed {
            future: BoxedResponse,
        },
    }
}

impl<S> Future for ResponseFuture<S, S::Future>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Send
        + 'static,
    S::Future: Send,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                ResponseProj::First {
                    call,
                    per_try,
                    retry,
                } => {
                    let mut result = match call.poll(cx) {
                        Poll::Ready(result) => result,
                        Poll::Pending => {
                            let expired = per_try
                                .as_mut()
                                .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                            match retry.as_ref() {
                                Some(retry) if expired => Err(retry.shared.per_try_expired()),
                                _ => return Poll::Pending,
                            }
                        }
                    };
                    // Decided in place: the kept request leaves its box only for a retry.
                    let Some(kept) = retry.as_deref() else {
                        return Poll::Ready(result);
                    };
                    let Some((delay, next)) =
                        kept.shared
                            .next_attempt(&kept.resend, &mut result, 1, kept.deadline)
                    else {
                        return Poll::Ready(result);
                    };
                    let Some(kept) = retry.take() else {
                        return Poll::Ready(result);
                    };
                    let Continuation {
                        shared,
                        inner,
                        resend,
                        deadline,
                        avoid,
                    } = *kept;
                    let failed = failed_endpoint(&result);
                    drop(result);
                    let future = Box::pin(shared.retry_from(Retrying {
                        inner,
                        resend,
                        deadline,
                        avoid,
                        attempt: 1,
                        failed,
                        delay,
                        next,
                    }));
                    self.set(ResponseFuture::Boxed { future });
                }
                ResponseProj::Boxed { future } => return future.as_mut().poll(cx),
            }
        }
    }
}

/// Where a call's next attempt comes from.
// NOTE: one per call, kept in its future; boxing the copy would add an allocation.
#[allow(clippy::large_enum_variant)]
enum Resend {
    /// A copy of the request, made for every retry: any condition may be retried.
    /// `body` is `None` for a request without one.
    Copy {
        template: Template,
        body: Option<Replay>,
    },
    /// The request itself, which `Forward` gives back in its error when no connection
    /// could be made: only failed connections are retried.
    Unsent,
}

impl Resend {
    /// Whether an attempt that ended with `result` may be sent again at all.
    fn may_retry(&self, result: &Result<Response<ProxyBody>, ProxyError>) -> bool {
        match self {
            Self::Copy { .. } => true,
            Self::Unsent => matches!(
                result,
                Err(ProxyError::Connect {
                    unsent: Some(_),
                    ..
                })
            ),
        }
    }

    /// The request of the next attempt, after `result` (which gives back an unsent one);
    /// `None` when its body cannot be sent again.
    fn request(
        &self,
        result: &mut Result<Response<ProxyBody>, ProxyError>,
    ) -> Option<Request<ProxyBody>> {
        match self {
            Self::Copy { template, body } => {
                // An unsent request given back still holds its copy of the body.
                if let Err(ProxyError::Connect { unsent, .. }) = result {
                    *unsent = None;
                }
                let body = match body {
                    None => ProxyBody::empty(),
                    Some(replay) => replay.try_body()?,
                };
                Some(template.request(body))
            }
            Self::Unsent => match result {
                Err(ProxyError::Connect { unsent, .. }) => {
                    unsent.take().map(|Unsent(request)| *request)
                }
                _ => None,
            },
        }
    }
}

/// A call between a failed attempt and its next one.
struct Retrying<S> {
    inner: S,
    resend: Resend,
    deadline: Option<Instant>,
    /// Endpoints earlier attempts failed on.
    avoid: Vec<SocketAddr>,
    /// The number of the attempt that failed.
    attempt: u32,
    /// The endpoint it failed on.
    failed: Option<SocketAddr>,
    /// The wait before the next attempt.
    delay: Duration,
    /// The next attempt's request.
    next: Request<ProxyBody>,
}

impl Shared {
    /// One call: the first attempt and any retries.
    async fn run<S>(
        self: Arc<Self>,
        mut inner: S,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
    {
        self.config.budget.deposit_at(arrival(&request));
        // A call whose method may not be repeated is retried only on a failed connection,
        // from `call`; here it gets one attempt.
        if self.config.max_attempts == 1 || !self.method_retryable(request.method()) {
            return self.attempt(&mut inner, request, 1).await;
        }
        let (parts, body) = request.into_parts();
        if body.size_hint().lower() > self.config.max_replay_bytes as u64 {
            // Too large to keep: sent once.
            let result = self
                .attempt(&mut inner, Request::from_parts(parts, body), 1)
                .await;
            if self.config.conditions.matches(&result) {
                self.counters.not_replayable.inc();
            }
            return result;
        }
        let (body, replay) = Replay::wrap(body, self.config.max_replay_bytes);
        let request = Request::from_parts(parts, body);
        let resend = Resend::Copy {
            template: Template::of(&request, KeptExtensions::of(request.extensions())),
            body: Some(replay),
        };
        self.first_and_retries(inner, request, resend).await
    }

    /// The first attempt of `request`, then any retries of it from `resend`.
    async fn first_and_retries<S>(
        self: Arc<Self>,
        mut inner: S,
        request: Request<ProxyBody>,
        resend: Resend,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
    {
        let deadline = deadline_of(request.extensions());
        let avoid = request
            .extensions()
            .get::<AvoidEndpoints>()
            .map(|a| a.0.clone())
            .unwrap_or_default();
        let mut result = self.attempt(&mut inner, request, 1).await;
        let Some((delay, next)) = self.next_attempt(&resend, &mut result, 1, deadline) else {
            return result;
        };
        let failed = failed_endpoint(&result);
        drop(result);
        self.retry_from(Retrying {
            inner,
            resend,
            deadline,
            avoid,
            attempt: 1,
            failed,
            delay,
            next,
        })
        .await
    }

    /// After attempt `attempt` ended with `result`: the wait and the request of the next
    /// one, or `None` when it is not retried. Withdraws from the budget when it is.
    fn next_attempt(
        &self,
        resend: &Resend,
        result: &mut Result<Response<ProxyBody>, ProxyError>,
        attempt: u32,
        deadline: Option<Instant>,
    ) -> Option<(Duration, Request<ProxyBody>)> {
        if !resend.may_retry(result) {
            return None;
        }
        if let Resend::Copy { .. } = resend {
            if !self.retries(result, attempt) {
                return None;
            }
            // The body first: a retry it cannot carry is not withdrawn from the budget.
            let Some(next) = resend.request(result) else {
                self.counters.not_replayable.inc();
                return None;
            };
            let delay = self.retry_delay(result, attempt, deadline)?;
            return Some((delay, next));
        }
        let delay = self.retry_delay(result, attempt, deadline)?;
        Some((delay, resend.request(result)?))
    }

    /// The attempts after a failed one, until one is not retried.
    async fn retry_from<S>(
        self: Arc<Self>,
        call: Retrying<S>,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
    {
        let Retrying {
            mut inner,
            resend,
            deadline,
            mut avoid,
            mut attempt,
            mut failed,
            mut delay,
            mut next,
        } = call;
        loop {
            if let Some(endpoint) = failed {
                if !avoid.contains(&endpoint) {
                    avoid.push(endpoint);
                }
            }
            // A retried response's body was dropped unread.
            tokio::time::sleep(delay).await;
            attempt += 1;
            next.extensions_mut().insert(AvoidEndpoints(avoid.clone()));
            inner.ready().await?;
            let mut result = self.attempt(&mut inner, next, attempt).await;
            (delay, next) = match self.next_attempt(&resend, &mut result, attempt, deadline) {
                Some(retry) => retry,
                None => return result,
            };
            failed = failed_endpoint(&result);
        }
    }

    /// Whether attempt `attempt`, ended with `result`, is one the config retries.
    fn retries(&self, result: &Result<Response<ProxyBody>, ProxyError>, attempt: u32) -> bool {
        attempt < self.config.max_attempts && self.config.conditions.matches(result)
    }

    /// Tags attempt `n` and counts it.
    fn prepare_attempt(&self, request: &mut Request<ProxyBody>, n: u32) {
        request
            .headers_mut()
            .insert(&ATTEMPT_HEADER, attempt_value(n));
        if n == 1 {
            self.counters.first.inc();
        } else {
            self.counters.retry.inc();
        }
    }

    /// The error of an attempt that ran past the per-try timeout, counted.
    fn per_try_expired(&self) -> ProxyError {
        let limit = self.config.per_try_timeout.unwrap_or_default();
        if let Some(metrics) = &self.timeout_metrics {
            metrics.record(&self.service, TimeoutKind::PerTry);
        }
        ProxyError::Timeout(limit)
    }

    fn method_retryable(&self, method: &Method) -> bool {
        self.config.retry_non_idempotent
            || matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::PUT
                    | Method::DELETE
                    | Method::TRACE
            )
    }

    /// Sends attempt number `n` (1-based), bounded by the per-try timeout.
    async fn attempt<S>(
        &self,
        inner: &mut S,
        request: Request<ProxyBody>,
        n: u32,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
    {
        let mut request = request;
        self.prepare_attempt(&mut request, n);
        let call = inner.call(request);
        let Some(limit) = self.config.per_try_timeout else {
            return call.await;
        };
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_elapsed) => Err(self.per_try_expired()),
        }
    }

    /// How long to wait before retrying after attempt `attempt` ended with `result`;
    /// `None` when it is not retried. Withdraws from the budget when it is. A call's
    /// `deadline` (set by the timeout layer) must leave time for the wait.
    fn retry_delay(
        &self,
        result: &Result<Response<ProxyBody>, ProxyError>,
        attempt: u32,
        deadline: Option<Instant>,
    ) -> Option<Duration> {
        if !self.retries(result, attempt) {
            return None;
        }
        let backoff = &self.config.backoff;
        let delay = match server_delay(result) {
            ServerDelay::Refused => return None,
            // NOTE: a server's wait is capped at the backoff maximum, so one response
            // cannot park a call (and its caller) for minutes.
            ServerDelay::After(wait) => wait.min(backoff.max()),
            ServerDelay::Unspecified => backoff.delay(attempt - 1),
        };
        if let Some(deadline) = deadline {
            // No time left for another attempt: the last failure says more than a timeout.
            if Instant::now() + delay >= deadline {
                return None;
            }
        }
        if !self.config.budget.try_withdraw() {
            self.counters.budget_exhausted.inc();
            if !self.exhausted.swap(true, Ordering::Relaxed) {
                tracing::warn!(service = %self.service, "retry budget exhausted: failed calls are not retried");
            }
            return None;
        }
        if self.exhausted.load(Ordering::Relaxed) && self.exhausted.swap(false, Ordering::Relaxed) {
            tracing::info!(service = %self.service, "retry budget available again");
        }
        self.counters.retries.inc();
        Some(delay)
    }
}

/// Attempt number `n` as a header value: a static one (no allocation) for every attempt
/// count a policy allows in practice.
fn attempt_value(n: u32) -> HeaderValue {
    const SMALL: [&str; 9] = ["1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match usize::try_from(n)
        .ok()
        .and_then(|n| SMALL.get(n.wrapping_sub(1)))
    {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(n),
    }
}

/// What is needed to rebuild the request for another attempt.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderCopy,
    extensions: KeptExtensions,
}

/// A request's header fields, copied in order into one allocation (a `HeaderMap`'s clone
/// takes two and copies its index too); a `HeaderMap` is built from it only for a retry.
struct HeaderCopy(Vec<(HeaderName, HeaderValue)>);

impl HeaderCopy {
    fn of(headers: &HeaderMap) -> Self {
        let mut fields = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            fields.push((name.clone(), value.clone()));
        }
        Self(fields)
    }

    fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.0.len());
        for (name, value) in &self.0 {
            map.append(name.clone(), value.clone());
        }
        map
    }
}

/// When `request`'s call arrived (now, for a request the proxy did not stamp).
fn arrival(request: &Request<ProxyBody>) -> Instant {
    arrival_of(request.extensions().get::<CallInfo>())
}

/// When the call of `call` arrived; now, without one.
fn arrival_of(call: Option<&CallInfo>) -> Instant {
    call.map_or_else(Instant::now, |call| call.arrived)
}

/// A request's extensions, as kept for its retries.
enum KeptExtensions {
    /// Only remora's own, copied without allocating; put back into an attempt's map
    /// only when there is a retry.
    Known {
        call: Option<CallInfo>,
        deadline: Option<Deadline>,
        trace: Option<CallTrace>,
    },
    /// Every extension (http 1 requires them to be `Clone`), for requests carrying others
    /// too: a shared `OnUpgrade`, say (only the attempt answered 101 takes the upgrade).
    All(Extensions),
}

impl KeptExtensions {
    fn of(extensions: &Extensions) -> Self {
        let call = extensions.get::<CallInfo>().copied();
        // A proxied call's usual map holds its `CallInfo` alone: one lookup, not three.
        if call.is_some() && extensions.len() == 1 {
            return Self::Known {
                call,
                deadline: None,
                trace: None,
            };
        }
        let deadline = extensions.get::<Deadline>().copied();
        let trace = extensions.get::<CallTrace>().cloned();
        let known = usize::from(call.is_some())
            + usize::from(deadline.is_some())
            + usize::from(trace.is_some());
        if known == extensions.len() {
            Self::Known {
                call,
                deadline,
                trace,
            }
        } else {
            Self::All(extensions.clone())
        }
    }

    /// When the call arrived (now, for a request the proxy did not stamp).
    fn arrival(&self) -> Instant {
        arrival_of(match self {
            Self::Known { call, .. } => call.as_ref(),
            Self::All(all) => all.get::<CallInfo>(),
        })
    }

    /// The call's deadline ([`deadline_of`]).
    fn deadline(&self) -> Option<Instant> {
        match self {
            Self::Known { call, deadline, .. } => call
                .and_then(|call| call.deadline)
                .or(deadline.map(|d| d.0)),
            Self::All(all) => deadline_of(all),
        }
    }

    fn to_extensions(&self) -> Extensions {
        match self {
            Self::Known {
                call,
                deadline,
                trace,
            } => {
                let mut extensions = Extensions::new();
                if let Some(call) = call {
                    extensions.insert(*call);
                }
                if let Some(deadline) = deadline {
                    extensions.insert(*deadline);
                }
                if let Some(trace) = trace {
                    extensions.insert(trace.clone());
                }
                extensions
            }
            Self::All(extensions) => extensions.clone(),
        }
    }
}

impl Template {
    fn of(request: &Request<ProxyBody>, extensions: KeptExtensions) -> Self {
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: HeaderCopy::of(request.headers()),
            extensions,
        }
    }

    fn request(&self, body: ProxyBody) -> Request<ProxyBody> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.to_map();
        *request.extensions_mut() = self.extensions.to_extensions();
        request
    }
}

/// The endpoint an attempt went to, when the result names it.
fn failed_endpoint(result: &Result<Response<ProxyBody>, ProxyError>) -> Option<SocketAddr> {
    match result {
        Ok(response) => response.extensions().get::<EndpointUsed>().map(|e| e.0),
        Err(ProxyError::Connect { endpoint, .. } | ProxyError::Upstream { endpoint, .. }) => {
            endpoint.parse().ok()
        }
        Err(_) => None,
    }
}

/// What a failed response says about retrying.
#[derive(Debug, PartialEq, Eq)]
enum ServerDelay {
    /// Nothing: use the backoff.
    Unspecified,
    /// Wait this long (`grpc-retry-pushback-ms`, or `Retry-After` in seconds).
    After(Duration),
    /// Do not retry (negative or malformed pushback).
    Refused,
}

fn server_delay(result: &Result<Response<ProxyBody>, ProxyError>) -> ServerDelay {
    let Ok(response) = result else {
        return ServerDelay::Unspecified;
    };
    let headers = response.headers();
    if let Some(pushback) = headers.get(&GRPC_PUSHBACK) {
        return match pushback.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(ms) => ServerDelay::After(Duration::from_millis(ms)),
            None => ServerDelay::Refused,
        };
    }
    // An HTTP-date Retry-After is ignored: the backoff applies.
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(ServerDelay::Unspecified, |s| {
            ServerDelay::After(Duration::from_secs(s))
        })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use bytes::Bytes;
    use http::StatusCode;
    use http_body::Frame;
    use http_body_util::BodyExt as _;
    use hyper_util::rt::TokioIo;
    use tower::service_fn;

    use super::*;
    use crate::core::grpc::GRPC_TIMEOUT;
    use crate::policy::timeout::{TimeoutConfig, TimeoutLayer};

    const MS: Duration = Duration::from_millis(1);

    /// What the inner service saw of each attempt.
    #[derive(Debug, Clone)]
    struct Seen {
        attempt: String,
        body: Bytes,
        avoid: Vec<SocketAddr>,
        grpc_timeout: Option<String>,
        at: Instant,
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    /// An inner service that records each attempt and answers with `answer(n)` (n from 1)
    /// after `delay(n)`.
    fn inner(
        answer: impl Fn(usize) -> Result<Response<ProxyBody>, ProxyError>
            + Clone
            + Send
            + Sync
            + 'static,
        delay: impl Fn(usize) -> Duration + Clone + Send + Sync + 'static,
    ) -> (
        impl Service<
                Request<ProxyBody>,
                Response = Response<ProxyBody>,
                Error = ProxyError,
                Future = impl Send,
            > + Clone
            + Send
            + Sync
            + 'static,
        Log,
    ) {
        let log = Log::default();
        let seen = log.clone();
        let service = service_fn(move |mut request: Request<ProxyBody>| {
            let (log, answer, delay) = (seen.clone(), answer.clone(), delay.clone());
            // As `Forward` does right before sending.
            crate::core::grpc::set_grpc_timeout(&mut request);
            async move {
                let at = Instant::now();
                let (parts, body) = request.into_parts();
                let body = body.collect().await.expect("body").to_bytes();
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(Seen {
                        attempt: parts.headers[&ATTEMPT_HEADER].to_str().unwrap().into(),
                        body,
                        avoid: parts
                            .extensions
                            .get::<AvoidEndpoints>()
                            .map(|a| a.0.clone())
                            .unwrap_or_default(),
                        grpc_timeout: parts
                            .headers
                            .get(&GRPC_TIMEOUT)
                            .map(|v| v.to_str().unwrap().into()),
                        at,
                    });
                    log.len()
                };
                tokio::time::sleep(delay(n)).await;
                answer(n)
            }
        });
        (service, log)
    }

    fn status(code: u16) -> Result<Response<ProxyBody>, ProxyError> {
        let mut response = Response::new(ProxyBody::full("answer"));
        *response.status_mut() = StatusCode::from_u16(code).unwrap();
        Ok(response)
    }

    fn with_header(
        mut result: Result<Response<ProxyBody>, ProxyError>,
        name: &'static str,
        value: &'static str,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if let Ok(response) = &mut result {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        result
    }

    fn no_delay(_: usize) -> Duration {
        Duration::ZERO
    }

    fn gateway_errors() -> Conditions {
        Conditions {
            gateway_error: true,
            timeout: true,
            connect_failure: true,
            grpc_codes: vec![tonic::Code::Unavailable],
            ..Default::default()
        }
    }

    fn config(max_attempts: u32) -> RetryConfig {
        let backoff = Backoff::try_new(10 * MS, Duration::from_secs(5), 0.0).unwrap();
        let budget = RetryBudget::try_new(0.2, 100, Duration::from_secs(10)).unwrap();
        RetryConfig::try_new(max_attempts, gateway_errors(), backoff, Arc::new(budget)).unwrap()
    }

    fn layer(config: RetryConfig) -> (RetryLayer, RetryMetrics) {
        let metrics = RetryMetrics::default();
        (
            RetryLayer::new(config, "svc".into(), metrics.clone()),
            metrics,
        )
    }

    fn counter(family: &PerService<Counter>) -> u64 {
        family.get_or_create(&ByService::of(&"svc".into())).get()
    }

    fn attempts(metrics: &RetryMetrics, attempt: AttemptKind) -> u64 {
        metrics
            .attempts
            .get_or_create(&AttemptLabels {
                service: ServiceLabel("svc".into()),
                attempt,
            })
            .get()
    }

    fn get() -> Request<ProxyBody> {
        Request::get("http://svc/x")
            .body(ProxyBody::empty())
            .unwrap()
    }

    fn attempts_seen(log: &Log) -> Vec<String> {
        log.lock()
            .unwrap()
            .iter()
            .map(|s| s.attempt.clone())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn flaky_upstream_succeeds_on_third_attempt() {
        let (service, log) = inner(|n| if n < 3 { status(503) } else { status(200) }, no_delay);
        let (layer, metrics) = layer(config(3));
        let started = Instant::now();
        let response = layer.layer(service).oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(attempts_seen(&log), ["1", "2", "3"]);
        // Backoff 10 ms, then 20 ms.
        let at: Vec<_> = log.lock().unwrap().iter().map(|s| s.at - started).collect();
        assert_eq!(at, [Duration::ZERO, 10 * MS, 30 * MS]);
        assert_eq!(attempts(&metrics, AttemptKind::First), 1);
        assert_eq!(attempts(&metrics, AttemptKind::Retry), 2);
        assert_eq!(counter(&metrics.retries), 2);
    }

    /// A marker extension that is not remora's own.
    #[derive(Debug, Clone, PartialEq)]
    struct Foreign(u32);

    #[tokio::test(start_paused = true)]
    async fn every_attempt_carries_the_request_extensions() {
        let client = CallInfo::new("192.0.2.7:4000".parse().unwrap());
        for foreign in [None, Some(Foreign(7))] {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let log = seen.clone();
            let service = service_fn(move |request: Request<ProxyBody>| {
                let extensions = request.extensions();
                log.lock().unwrap().push((
                    extensions.get::<CallInfo>().map(|c| c.client),
                    extensions.get::<Deadline>().copied(),
                    extensions.get::<Foreign>().cloned(),
                ));
                let n = log.lock().unwrap().len();
                async move {
                    if n < 3 {
                        status(503)
                    } else {
                        status(200)
                    }
                }
            });
            let (layer, _) = layer(config(3));
            let mut request = get();
            let deadline = Deadline(Instant::now() + Duration::from_secs(60));
            request.extensions_mut().insert(client);
            request.extensions_mut().insert(deadline);
            if let Some(foreign) = foreign.clone() {
                request.extensions_mut().insert(foreign);
            }
            let response = layer.layer(service).oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 3);
            for attempt in seen.iter() {
                assert_eq!(
                    attempt,
                    &(Some(client.client), Some(deadline), foreign.clone())
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_the_last_result() {
        let (service, log) = inner(|_| status(503), no_delay);
        let (layer, metrics) = layer(config(2));
        let response = layer.layer(service).oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(attempts_seen(&log), ["1", "2"]);
        assert_eq!(counter(&metrics.retries), 1);
        assert_eq!(counter(&metrics.budget_exhausted), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn unmatched_results_are_not_retried() {
        let (service, log) = inner(|_| status(500), no_delay);
        let (layer, _) = layer(config(3));
        let response = layer.layer(service).oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(attempts_seen(&log), ["1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn next_attempt_avoids_failed_endpoints() {
        let first: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let second: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let (service, log) = inner(
            move |n| match n {
                1 => Err(ProxyError::Connect {
                    endpoint: first.to_string(),
                    source: "refused".into(),
                    unsent: None,
                }),
                2 => {
                    let mut response = status(503)?;
                    response.extensions_mut().insert(EndpointUsed(second));
                    Ok(response)
                }
                _ => status(200),
            },
            no_delay,
        );
        let (layer, _) = layer(config(3));
        let response = layer.layer(service).oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let avoid: Vec<_> = log
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.avoid.clone())
            .collect();
        assert_eq!(avoid, [vec![], vec![first], vec![first, second]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_connection_gives_the_unsent_request_back_for_the_next_attempt() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let service = service_fn(move |request: Request<ProxyBody>| {
            let attempt = request.headers()[&ATTEMPT_HEADER]
                .to_str()
                .unwrap()
                .to_string();
            let n = {
                let mut log = log.lock().unwrap();
                log.push(attempt);
                log.len()
            };
            async move {
                if n == 1 {
                    // What `Forward` does when no connection could be made.
                    return Err(ProxyError::Connect {
                        endpoint: "10.0.0.1:80".into(),
                        source: "refused".into(),
                        unsent: Some(Unsent(Box::new(request))),
                    });
                }
                let body = request.into_body().collect().await.unwrap().to_bytes();
                Ok(Response::new(ProxyBody::full(body)))
            }
        });
        let (retry, metrics) = layer(config(3));
        let post = Request::post("http://svc/x")
            .body(ProxyBody::full("order"))
            .unwrap();
        let response = retry.layer(service).oneshot(post).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body, "order",
            "the same request, body untouched, sent again"
        );
        assert_eq!(*seen.lock().unwrap(), ["1", "2"]);
        assert_eq!(counter(&metrics.retries), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn post_is_retried_only_when_allowed() {
        let post = || {
            Request::post("http://svc/x")
                .body(ProxyBody::full("order"))
                .unwrap()
        };
        let (service, log) = inner(|_| status(503), no_delay);
        let (retry, _) = layer(config(3));
        let response = retry.layer(service).oneshot(post()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(attempts_seen(&log), ["1"]);

        let (service, log) = inner(|_| status(503), no_delay);
        let (retry, _) = layer(config(3).with_retry_non_idempotent(true));
        retry.layer(service).oneshot(post()).await.unwrap();
        assert_eq!(attempts_seen(&log), ["1", "2", "3"]);
        let bodies: Vec<_> = log.lock().unwrap().iter().map(|s| s.body.clone()).collect();
        assert_eq!(bodies, ["order", "order", "order"]);
    }

    #[tokio::test(start_paused = true)]
    async fn large_whole_body_is_sent_once() {
        let payload = Bytes::from(vec![7u8; 100 * 1024]);
        let (service, log) = inner(|_| status(503), no_delay);
        let (retry, metrics) = layer(config(3));
        let request = Request::put("http://svc/x")
            .body(ProxyBody::full(payload.clone()))
            .unwrap();
        let response = retry.layer(service).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(attempts_seen(&log), ["1"]);
        assert_eq!(log.lock().unwrap()[0].body, payload);
        assert_eq!(counter(&metrics.not_replayable), 1);
    }

    /// Sends `frames` as a chunked HTTP/1.1 PUT through a real hyper connection to a
    /// server running `service`, so that it sees a streamed `Incoming` body of unknown
    /// length. `keep_open` leaves the request body unfinished after the frames.
    async fn through_hyper<S>(
        service: S,
        content_type: &'static str,
        frames: Vec<Bytes>,
        keep_open: bool,
    ) -> StatusCode
    where
        S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send,
    {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let server = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let service = service.clone();
            async move {
                let result = service.oneshot(request.map(ProxyBody::streamed)).await;
                Ok::<_, Infallible>(result.unwrap_or_else(|e| e.to_response(false)))
            }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server_io), server),
        );
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(client_io))
                .await
                .unwrap();
        tokio::spawn(connection);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        for frame in frames {
            tx.send(frame).await.unwrap();
        }
        if !keep_open {
            drop(tx);
        } else {
            std::mem::forget(tx);
        }
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let frame = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(frame)), rx))
        });
        let request = Request::put("http://svc/x")
            .header(http::header::CONTENT_TYPE, content_type)
            .body(http_body_util::StreamBody::new(stream))
            .unwrap();
        sender.send_request(request).await.unwrap().status()
    }

    fn chunks(total: usize, chunk: usize) -> (Bytes, Vec<Bytes>) {
        let whole: Bytes = (0..total).map(|i| (i % 251) as u8).collect();
        let frames = (0..total)
            .step_by(chunk)
            .map(|at| whole.slice(at..(at + chunk).min(total)))
            .collect();
        (whole, frames)
    }

    #[tokio::test(start_paused = true)]
    async fn small_chunked_body_is_replayed_byte_identical() {
        let (whole, frames) = chunks(10 * 1024, 1000);
        let (service, log) = inner(|n| if n < 3 { status(503) } else { status(200) }, no_delay);
        let (retry, _) = layer(config(3));
        let status = through_hyper(
            retry.layer(service),
            "application/octet-stream",
            frames,
            false,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 3);
        for seen in log.iter() {
            assert_eq!(seen.body, whole);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn large_chunked_body_is_sent_once_and_whole() {
        let (whole, frames) = chunks(100 * 1024, 4096);
        let (service, log) = inner(|_| status(503), no_delay);
        let (retry, metrics) = layer(config(3));
        let status = through_hyper(
            retry.layer(service),
            "application/octet-stream",
            frames,
            false,
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(attempts_seen(&log), ["1"]);
        assert_eq!(log.lock().unwrap()[0].body, whole);
        assert_eq!(counter(&metrics.not_replayable), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn open_grpc_stream_is_forwarded_without_waiting_for_its_end() {
        // One whole gRPC message (5-byte prefix + 3 bytes); the client keeps streaming.
        let message = Bytes::from_static(&[0, 0, 0, 0, 3, b'a', b'b', b'c']);
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let service = service_fn(move |request: Request<ProxyBody>| {
            let seen_tx = seen_tx.clone();
            async move {
                let mut body = request.into_body();
                let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
                seen_tx.send(first).await.unwrap();
                Ok::<_, ProxyError>(Response::new(ProxyBody::empty()))
            }
        });
        let (retry, _) = layer(config(3));
        let status = tokio::time::timeout(
            Duration::from_secs(60),
            through_hyper(
                retry.layer(service),
                "application/grpc",
                vec![message.clone()],
                true,
            ),
        )
        .await
        .expect("the call must not wait for the request stream to end");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(seen_rx.recv().await.unwrap(), message);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_stops_a_retry_storm() {
        // 100 calls deposit 0.1 × 100 = 10 retries (no floor); every attempt fails.
        let (service, log) = inner(|_| status(503), |_| MS);
        let backoff = Backoff::try_new(10 * MS, Duration::from_secs(1), 0.0).unwrap();
        let budget = RetryBudget::try_new(0.1, 0, Duration::from_secs(10)).unwrap();
        let config = RetryConfig::try_new(3, gateway_errors(), backoff, Arc::new(budget)).unwrap();
        let (retry, metrics) = layer(config);
        let service = retry.layer(service);
        let calls = (0..100).map(|_| service.clone().oneshot(get()));
        let results = futures_util::future::join_all(calls).await;
        assert!(results.iter().all(|r| r.as_ref().unwrap().status() == 503));
        assert_eq!(log.lock().unwrap().len(), 110);
        assert_eq!(counter(&metrics.retries), 10);
        // 90 refused after a first attempt, 10 after their retry.
        assert_eq!(counter(&metrics.budget_exhausted), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_and_capped() {
        let (service, log) = inner(
            |n| match n {
                1 => with_header(status(503), "retry-after", "2"),
                2 => with_header(status(503), "retry-after", "3600"),
                _ => status(200),
            },
            no_delay,
        );
        let (retry, _) = layer(config(3));
        let started = Instant::now();
        retry.layer(service).oneshot(get()).await.unwrap();
        let at: Vec<_> = log.lock().unwrap().iter().map(|s| s.at - started).collect();
        // 2 s as asked, then 1 h capped at the backoff maximum (5 s).
        assert_eq!(at, [Duration::ZERO, 2000 * MS, 7000 * MS]);
    }

    fn grpc_unavailable(pushback: &'static str) -> Result<Response<ProxyBody>, ProxyError> {
        let response = with_header(status(200), "grpc-status", "14");
        with_header(response, "grpc-retry-pushback-ms", pushback)
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_pushback_is_honoured_and_negative_stops_retries() {
        let (service, log) = inner(
            |n| {
                if n == 1 {
                    grpc_unavailable("300")
                } else {
                    status(200)
                }
            },
            no_delay,
        );
        let (retry, _) = layer(config(3));
        let started = Instant::now();
        retry.layer(service).oneshot(get()).await.unwrap();
        let at: Vec<_> = log.lock().unwrap().iter().map(|s| s.at - started).collect();
        assert_eq!(at, [Duration::ZERO, 300 * MS]);

        for refusal in ["-1", "soon"] {
            let (service, log) = inner(move |_| grpc_unavailable(refusal), no_delay);
            let (retry, metrics) = layer(config(3));
            let response = retry.layer(service).oneshot(get()).await.unwrap();
            assert_eq!(response.headers()["grpc-status"], "14");
            assert_eq!(attempts_seen(&log), ["1"], "pushback {refusal}");
            assert_eq!(counter(&metrics.retries), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_timeout_triggers_a_retry() {
        let (service, log) = inner(
            |_| status(200),
            |n| {
                if n == 1 {
                    Duration::from_secs(10)
                } else {
                    5 * MS
                }
            },
        );
        let config = config(3).with_per_try_timeout(Some(100 * MS)).unwrap();
        let timeouts = TimeoutMetrics::default();
        let (retry, _) = layer(config);
        let retry = retry.with_timeout_metrics(timeouts.clone());
        let started = Instant::now();
        let response = retry.layer(service).oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(attempts_seen(&log), ["1", "2"]);
        // 100 ms per-try timeout, 10 ms backoff, 5 ms answer.
        assert_eq!(started.elapsed(), 115 * MS);
        assert_eq!(timeouts.count("svc", TimeoutKind::PerTry), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn overall_timeout_bounds_all_attempts() {
        let (service, log) = inner(|_| status(503), |_| 45 * MS);
        let (retry, _) = layer(config(100));
        let timeout = TimeoutLayer::new(
            TimeoutConfig::try_new(Some(Duration::from_millis(150))).unwrap(),
            "svc".into(),
            TimeoutMetrics::default(),
        );
        let service = timeout.layer(retry.layer(service));
        let started = Instant::now();
        let result = service.oneshot(get()).await;
        assert!(matches!(result, Err(ProxyError::Timeout(d)) if d == 150 * MS));
        assert_eq!(started.elapsed(), 150 * MS);
        // Attempts at 0, 55 (45 + 10) and 120 (100 + 20) ms; the deadline cuts the third.
        assert_eq!(attempts_seen(&log), ["1", "2", "3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn propagated_grpc_timeout_decreases_by_elapsed_time() {
        let (service, log) = inner(
            |n| if n == 1 { status(503) } else { status(200) },
            |n| if n == 1 { 200 * MS } else { Duration::ZERO },
        );
        let (retry, _) = layer(config(3));
        let timeout = TimeoutLayer::new(
            TimeoutConfig::default(),
            "svc".into(),
            TimeoutMetrics::default(),
        );
        let service = timeout.layer(retry.layer(service));
        let mut request = get();
        request
            .headers_mut()
            .insert(&GRPC_TIMEOUT, HeaderValue::from_static("1S"));
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let timeouts: Vec<_> = log
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.grpc_timeout.clone().unwrap())
            .collect();
        // 200 ms for the first attempt, 10 ms backoff.
        assert_eq!(timeouts, ["1S", "790m"]);
    }

    #[test]
    fn rejects_nonsense() {
        let budget = Arc::new(RetryBudget::default());
        let err =
            RetryConfig::try_new(0, Conditions::default(), Backoff::default(), budget).unwrap_err();
        assert!(err.to_string().contains("max_attempts must be at least 1"));
        assert!(config(2)
            .with_per_try_timeout(Some(Duration::ZERO))
            .is_err());
        assert!(config(2).with_max_replay_bytes(1 << 30).is_err());
    }

    #[test]
    fn attempt_values_are_the_numbers() {
        for n in [1, 2, 9, 10, 11, 123, u32::MAX] {
            assert_eq!(attempt_value(n), HeaderValue::from(n));
        }
    }
}
