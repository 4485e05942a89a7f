//! Retries failed attempts of a call, within a budget, after a backoff.
//!
//! Sits below the overall timeout and above the service breaker and the balancer: each
//! attempt goes through the balancer again, asking it to avoid the endpoints that already
//! failed ([`AvoidEndpoints`]). A call is retried only when
//! - its method is idempotent (or the config allows any method),
//! - its body can be replayed: it is empty or fits `max_replay_bytes` (read ahead and
//!   kept as `Bytes`; a larger body is sent once, untouched after the bytes read ahead),
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

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Extensions, HeaderMap, Method, Request, Response, Uri, Version};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt as _;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt as _};

use super::backoff::Backoff;
use super::budget::RetryBudget;
use super::outcome::Conditions;
use super::timeout::{set_grpc_timeout, Deadline, TimeoutKind, TimeoutMetrics};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::metrics::ServiceLabel;
use crate::upstream::{AvoidEndpoints, EndpointUsed};

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

/// Labels of the per-service retry counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    /// The service called.
    pub service: ServiceLabel,
}

/// Retry's counters.
#[derive(Debug, Clone, Default)]
pub struct RetryMetrics {
    /// `remora_retry_attempts_total{service, attempt}`: attempts sent.
    attempts: Family<AttemptLabels, Counter>,
    /// `remora_retries_total{service}`: decisions to retry.
    retries: Family<RetryLabels, Counter>,
    /// `remora_retry_budget_exhausted_total{service}`: retries refused by the budget.
    budget_exhausted: Family<RetryLabels, Counter>,
    /// `remora_retry_not_replayable_total{service}`: retries given up for the body.
    not_replayable: Family<RetryLabels, Counter>,
}

impl RetryMetrics {
    /// Registers retry's counters.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "retry_attempts",
            "Attempts sent upstream, by service and whether first or retry",
            metrics.attempts.clone(),
        );
        registry.register(
            "retries",
            "Failed attempts that were retried",
            metrics.retries.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Failed attempts not retried because the retry budget was spent",
            metrics.budget_exhausted.clone(),
        );
        registry.register(
            "retry_not_replayable",
            "Failed attempts not retried because the request body could not be replayed",
            metrics.not_replayable.clone(),
        );
        metrics
    }

    fn count(family: &Family<RetryLabels, Counter>, service: &Arc<str>) {
        family
            .get_or_create(&RetryLabels {
                service: ServiceLabel(service.clone()),
            })
            .inc();
    }
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
    metrics: RetryMetrics,
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
                config,
                service,
                metrics,
                timeout_metrics: None,
                exhausted: AtomicBool::new(false),
            }),
        }
    }

    /// Counts per-try timeouts as `remora_timeouts_total{kind="per_try"}`.
    pub fn with_timeout_metrics(self, metrics: TimeoutMetrics) -> Self {
        let shared = &self.shared;
        Self {
            shared: Arc::new(Shared {
                config: shared.config.clone(),
                service: shared.service.clone(),
                metrics: shared.metrics.clone(),
                timeout_metrics: Some(metrics),
                exhausted: AtomicBool::new(false),
            }),
        }
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

/// The response future of [`Retry`].
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send>>;

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
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ProxyBody>) -> ResponseFuture {
        // The ready service takes the call; the clone left behind is made ready again.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(self.shared.clone().run(inner, request))
    }
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
        self.config.budget.deposit();
        if self.config.max_attempts == 1 || !self.method_retryable(request.method()) {
            return self.attempt(&mut inner, request, 1).await;
        }
        let (parts, body) = request.into_parts();
        let grpc = is_grpc(&parts.headers);
        let body = match read_replayable(body, self.config.max_replay_bytes, grpc).await? {
            Replay::Whole(body) => body,
            Replay::Once(body) => {
                let result = self
                    .attempt(&mut inner, Request::from_parts(parts, body), 1)
                    .await;
                if self.config.conditions.matches(&result) {
                    RetryMetrics::count(&self.metrics.not_replayable, &self.service);
                }
                return result;
            }
        };
        let template = Template::of(&parts);
        let deadline = parts.extensions.get::<Deadline>().map(|d| d.0);
        let mut avoid = parts
            .extensions
            .get::<AvoidEndpoints>()
            .map(|a| a.0.clone())
            .unwrap_or_default();
        let mut request = Request::from_parts(parts, ProxyBody::full(body.clone()));
        let mut attempt = 1;
        loop {
            let result = self.attempt(&mut inner, request, attempt).await;
            let Some(delay) = self.retry_delay(&result, attempt, deadline) else {
                return result;
            };
            if let Some(endpoint) = failed_endpoint(&result) {
                if !avoid.contains(&endpoint) {
                    avoid.push(endpoint);
                }
            }
            // A retried response's body is dropped unread.
            drop(result);
            tokio::time::sleep(delay).await;
            attempt += 1;
            request = template.request(body.clone());
            request
                .extensions_mut()
                .insert(AvoidEndpoints(avoid.clone()));
            inner.ready().await?;
        }
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
        mut request: Request<ProxyBody>,
        n: u32,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
    {
        request
            .headers_mut()
            .insert(&ATTEMPT_HEADER, HeaderValue::from(n));
        set_grpc_timeout(&mut request);
        let attempt = if n == 1 {
            AttemptKind::First
        } else {
            AttemptKind::Retry
        };
        self.metrics
            .attempts
            .get_or_create(&AttemptLabels {
                service: ServiceLabel(self.service.clone()),
                attempt,
            })
            .inc();
        let call = inner.call(request);
        let Some(limit) = self.config.per_try_timeout else {
            return call.await;
        };
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_elapsed) => {
                if let Some(metrics) = &self.timeout_metrics {
                    metrics.record(&self.service, TimeoutKind::PerTry);
                }
                Err(ProxyError::Timeout(limit))
            }
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
        if attempt >= self.config.max_attempts || !self.config.conditions.matches(result) {
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
            RetryMetrics::count(&self.metrics.budget_exhausted, &self.service);
            if !self.exhausted.swap(true, Ordering::Relaxed) {
                tracing::warn!(service = %self.service, "retry budget exhausted: failed calls are not retried");
            }
            return None;
        }
        if self.exhausted.load(Ordering::Relaxed) && self.exhausted.swap(false, Ordering::Relaxed) {
            tracing::info!(service = %self.service, "retry budget available again");
        }
        RetryMetrics::count(&self.metrics.retries, &self.service);
        Some(delay)
    }
}

/// What is needed to rebuild the request for another attempt.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    /// Every extension (http 1 requires them to be `Clone`): `ClientAddr`, `Deadline`,
    /// and a shared `OnUpgrade` (only the attempt answered 101 takes the upgrade).
    extensions: Extensions,
}

impl Template {
    fn of(parts: &http::request::Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
        }
    }

    fn request(&self, body: Bytes) -> Request<ProxyBody> {
        let mut request = Request::new(ProxyBody::full(body));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
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

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A request body as retry holds it.
enum Replay {
    /// The whole body: every attempt sends a copy.
    Whole(Bytes),
    /// Too large, or not known to end: sent once (bytes read ahead, then the rest).
    Once(ProxyBody),
}

/// Reads `body` ahead, keeping it whole if it ends within `limit` bytes.
///
/// A body whose size hint already exceeds `limit` is not read. A gRPC body is not waited
/// on past a message boundary: a streaming call's client may wait for responses before
/// sending more, so when no further frame is ready right away the call is sent once.
///
/// NOTE: an unknown-length plain HTTP body is waited on until it ends or passes `limit`;
/// a (rare) HTTP/1.1 client that streams its request while awaiting the response is not
/// served until then.
async fn read_replayable(
    mut body: ProxyBody,
    limit: usize,
    grpc: bool,
) -> Result<Replay, ProxyError> {
    if body.is_end_stream() {
        return Ok(Replay::Whole(Bytes::new()));
    }
    if body.size_hint().lower() > limit as u64 {
        return Ok(Replay::Once(body));
    }
    let mut buffered = BytesMut::new();
    // Where the next whole gRPC message starts in `buffered`.
    let mut message_end = 0;
    loop {
        let at_message_boundary = grpc && message_end > 0 && message_end == buffered.len();
        let next = if at_message_boundary && !body.is_end_stream() {
            match body.frame().now_or_never() {
                Some(next) => next,
                None => return Ok(Replay::Once(prefixed(buffered, None, body))),
            }
        } else {
            body.frame().await
        };
        let frame = match next {
            None => return Ok(Replay::Whole(buffered.freeze())),
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                return Err(ProxyError::BadRequest(format!(
                    "reading the request body: {error}"
                )))
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            // Trailers are not kept for replay: send once.
            Err(trailers) => return Ok(Replay::Once(prefixed(buffered, Some(trailers), body))),
        };
        if buffered.len() + data.len() > limit {
            return Ok(Replay::Once(prefixed(
                buffered,
                Some(Frame::data(data)),
                body,
            )));
        }
        buffered.extend_from_slice(&data);
        if grpc {
            message_end = next_message_boundary(&buffered, message_end);
        }
    }
}

/// The end of the last whole gRPC message (5-byte prefix: flag, u32 length) in
/// `buffered`, scanning from the boundary `from`.
fn next_message_boundary(buffered: &[u8], mut from: usize) -> usize {
    while let Some(prefix) = buffered.get(from..from + 5) {
        let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        let end = from + 5 + length;
        if end > buffered.len() {
            break;
        }
        from = end;
    }
    from
}

/// The bytes read ahead, then `next` (a frame read but not kept), then the rest.
fn prefixed(buffered: BytesMut, next: Option<Frame<Bytes>>, rest: ProxyBody) -> ProxyBody {
    let rest = match next {
        Some(frame) => ProxyBody::prefixed(frame, rest),
        None => rest,
    };
    if buffered.is_empty() {
        return rest;
    }
    ProxyBody::prefixed(Frame::data(buffered.freeze()), rest)
}
