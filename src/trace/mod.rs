//! Distributed tracing on the request path: trace context in and out, spans, the
//! request id and the access log.
//!
//! [`Tracing`] is one sidecar's tracer (its own provider, so several sidecars can run
//! in one process). Per request, [`Tracing::start`] reads the caller's trace context
//! (W3C, B3 or Jaeger), makes sure an `x-request-id` exists, starts the request span
//! (a server span inbound, a client span outbound) and puts a [`CallTrace`] in the
//! request's extensions. [`attempt`] in `Forward` writes the context the upstream
//! continues into each try's request and starts a child span per try of retried calls
//! (of every call with [`AttemptSpans::Always`]); [`RequestTrace::finish`] records the
//! answer, ends the span and writes the access log line (for a gRPC answer whose status
//! comes in trailers, when its body ends: see [`trailers`]). Policy layers record their
//! decisions with [`event`] on the current span.
//!
//! Spans are remora's own records (`span.rs`), written in OTLP wire form as they are
//! filled and exported by remora's encoder (`otlp.rs`); trace context, its propagators and
//! the span API that [`event`] uses are the opentelemetry crate's.
//!
//! NOTE: spans use the opentelemetry API directly, not `tracing` + tracing-opentelemetry:
//! a `tracing` layer is one per process (we need one tracer per sidecar), it allocates
//! span state for every span even when sampling says no, and the attempt span has to
//! cross the type-erased stack in a request extension anyway. With sampling off a
//! request costs a header parse, two span ids and a `traceparent` write.

mod export;
mod otlp;
mod propagation;
mod span;
pub mod trailers;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue};

use crate::core::body::watch;
use crate::core::body::ProxyBody;
use crate::core::call::EndpointUsed;
use crate::core::error::{ProxyError, ERROR_HEADER};
use crate::core::grpc::{grpc_path, grpc_status, grpc_status_at, GrpcStatusAt};
use crate::core::labels::Direction;

pub use export::TracingMetrics;
use export::{Collector, Flusher, QueueLimits, Sink};
use propagation::Propagators;
use span::{Kind, LiveSpan, Recording, SpanHandle};

/// The header carrying a request's id; generated when the caller sent none.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The `tracing` target of access log lines.
pub const ACCESS_LOG_TARGET: &str = "remora::access";

/// Wire protocol toward the OTLP collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/gRPC, usually port 4317.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies, usually port 4318 (`/v1/traces` is appended
    /// when the endpoint has no path).
    HttpProtobuf,
}

/// A trace-context header format written toward upstreams (every format is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// W3C `traceparent` / `tracestate` (always written) and `baggage`.
    W3c,
    /// Zipkin B3, multi-header form (`X-B3-TraceId`, ...).
    B3,
    /// Jaeger `uber-trace-id`.
    Jaeger,
}

/// Tracing settings of one sidecar; `config/` builds it from YAML.
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// The collector, e.g. `http://127.0.0.1:4317`; `None` propagates context without
    /// recording or exporting spans.
    pub endpoint: Option<String>,
    /// How to talk to the collector.
    pub protocol: OtlpProtocol,
    /// Fraction of new traces sampled, in `[0, 1]`; a caller's decision is followed.
    pub sampling_ratio: f64,
    /// Formats written toward upstreams besides W3C.
    pub propagate: Vec<Propagation>,
    /// The resource's `service.name`: the service this sidecar runs beside.
    pub service_name: String,
    /// Finished spans waiting for export at most; beyond it spans are dropped and counted.
    pub queue_size: usize,
    /// Spans per export call at most.
    pub batch_size: usize,
    /// How long a partial batch waits before it is exported.
    pub batch_delay: Duration,
    /// How long one export may take; its spans count as dropped after that.
    pub export_timeout: Duration,
    /// Whether to write one `remora::access` log line per request.
    pub access_log: bool,
    /// Which tries of a call get a span of their own.
    pub attempt_spans: AttemptSpans,
}

/// Which tries of a call get a span of their own (a child of the call span).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttemptSpans {
    /// The tries of retried calls only. A call answered by its first try is described by
    /// its call span alone (the upstream's span is the call span's child); once a retry
    /// starts, the first try's span is recorded after the fact from what was kept of it
    /// (start, end, endpoint, outcome), so a retried call shows every try. Half the
    /// spans, and half the export work, of `Always` for calls that are not retried.
    #[default]
    Retries,
    /// Every try, retried or not.
    Always,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            sampling_ratio: 1.0,
            propagate: vec![Propagation::W3c],
            service_name: "remora".into(),
            queue_size: 2048,
            batch_size: 512,
            batch_delay: Duration::from_secs(1),
            export_timeout: Duration::from_secs(10),
            access_log: true,
            attempt_spans: AttemptSpans::default(),
        }
    }
}

/// Why a tracing config was refused.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    /// The ratio is not a fraction.
    #[error("sampling ratio must be between 0 and 1, got {0}")]
    SamplingRatio(f64),
    /// A queue or batch bound is zero, or the batch is larger than the queue.
    #[error("{0} must be at least 1 (and a batch at most the queue)")]
    ZeroBound(&'static str),
    /// A time limit is zero.
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// The endpoint is not an `http://` URL.
    #[error("invalid collector address {endpoint:?}: {reason}")]
    Endpoint {
        /// As configured.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl TracingConfig {
    /// Checks the bounds once, so the request path never has to.
    pub fn validate(&self) -> Result<(), TracingError> {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(TracingError::SamplingRatio(self.sampling_ratio));
        }
        if self.queue_size == 0 {
            return Err(TracingError::ZeroBound("queue_size"));
        }
        if self.batch_size == 0 || self.batch_size > self.queue_size {
            return Err(TracingError::ZeroBound("batch_size"));
        }
        if self.export_timeout.is_zero() {
            return Err(TracingError::ZeroDuration("export_timeout"));
        }
        if let Some(endpoint) = &self.endpoint {
            collector_uri(endpoint, self.protocol)?;
        }
        Ok(())
    }
}

/// The URI to export to: `endpoint`, with `/v1/traces` added for HTTP when it has no path.
fn collector_uri(endpoint: &str, protocol: OtlpProtocol) -> Result<Uri, TracingError> {
    let refuse = |reason: String| TracingError::Endpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    let uri: Uri = endpoint.parse().map_err(|e| refuse(format!("{e}")))?;
    if uri.scheme_str() == Some("https") {
        return Err(refuse(
            "TLS to the collector is not supported: export to a collector or agent \
             on the same host or network over http://"
                .into(),
        ));
    }
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(refuse("write it like `http://127.0.0.1:4317`".into()));
    }
    let bare = matches!(uri.path(), "" | "/");
    let uri = match protocol {
        OtlpProtocol::HttpProtobuf if bare => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => return Ok(uri),
    };
    uri.parse().map_err(|e| refuse(format!("{e}")))
}

/// One sidecar's tracer, propagators and access-log switch; cheap to clone.
#[derive(Clone)]
pub struct Tracing(Arc<Inner>);

struct Inner {
    /// Where sampled spans go; `None` when no collector is configured: context is
    /// propagated, nothing recorded.
    sink: Option<Sink>,
    /// Kept to flush on shutdown.
    flusher: Option<Flusher>,
    propagators: Propagators,
    /// Fraction of new traces sampled.
    ratio: f64,
    access_log: bool,
    attempt_spans: AttemptSpans,
    metrics: TracingMetrics,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("exporting", &self.0.sink.is_some())
            .field("access_log", &self.0.access_log)
            .finish_non_exhaustive()
    }
}

impl Default for Tracing {
    fn default() -> Self {
        Self::disabled()
    }
}

impl Tracing {
    /// Context propagation (W3C) and access logs, no span export.
    pub fn disabled() -> Self {
        Self::with_sink(&TracingConfig::default(), TracingMetrics::default(), None)
    }

    fn with_sink(
        config: &TracingConfig,
        metrics: TracingMetrics,
        exporting: Option<(Sink, Flusher)>,
    ) -> Self {
        let (sink, flusher) = exporting.unzip();
        Self(Arc::new(Inner {
            sink,
            flusher,
            propagators: Propagators::new(&config.propagate),
            ratio: config.sampling_ratio,
            access_log: config.access_log,
            attempt_spans: config.attempt_spans,
            metrics,
        }))
    }

    /// A tracer exporting to `config.endpoint` (when set), counting into `metrics`.
    /// Must be called on a tokio runtime: the export task is spawned on it.
    pub fn new(config: &TracingConfig, metrics: TracingMetrics) -> Result<Self, TracingError> {
        config.validate()?;
        let Some(endpoint) = &config.endpoint else {
            return Ok(Self::with_sink(config, metrics, None));
        };
        let collector = Collector::new(collector_uri(endpoint, config.protocol)?, config.protocol);
        let limits = QueueLimits {
            queue_size: config.queue_size,
            batch_size: config.batch_size,
            delay: config.batch_delay,
            export_timeout: config.export_timeout,
        };
        let encoder = otlp::Encoder::new(&config.service_name);
        let exporting = export::spawn(collector, encoder, limits, metrics.clone());
        Ok(Self::with_sink(config, metrics, Some(exporting)))
    }

    /// The export counters.
    pub fn metrics(&self) -> &TracingMetrics {
        &self.0.metrics
    }

    /// Waits until the spans finished so far were exported (or dropped).
    pub async fn flush(&self) {
        if let Some(flusher) = &self.0.flusher {
            flusher.flush().await;
        }
    }

    /// Starts the trace of one request arriving in `direction`: request id, caller's
    /// context, the request span (in the request's extensions as a [`CallTrace`]).
    pub fn start<B>(&self, request: &mut Request<B>, direction: Direction) -> RequestTrace {
        let request_id = match request.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = new_request_id();
                request.headers_mut().insert(&REQUEST_ID, id.clone());
                id
            }
        };
        let parent = self.0.propagators.extract(request.headers());
        let kind = match direction {
            Direction::Inbound => Kind::Server,
            Direction::Outbound => Kind::Client,
        };
        let grpc = grpc_path(request);
        let name = match grpc {
            Some((service, method)) => Cow::Owned(format!("{service}/{method}")),
            None => Cow::Borrowed(method_name(request.method())),
        };
        let (cx, span) = self.start_span(&parent, name, kind, SystemTime::now(), |recording| {
            call_attributes(&mut recording.attributes, request, direction, grpc);
            recording
                .attributes
                .str("http.request_id", &header_text(&request_id));
        });
        // Nothing is injected here: every attempt writes its own context (`attempt`),
        // replacing the caller's headers, right before it is sent.
        let call = CallTrace(Arc::new(CallInner {
            tracing: self.clone(),
            cx,
            span,
            attempts: AtomicU32::new(0),
            service: OnceLock::new(),
            direction,
            first_try: std::sync::Mutex::new(None),
        }));
        request.extensions_mut().insert(call.clone());
        RequestTrace {
            call,
            started: Instant::now(),
            request_id,
            method: request.method().clone(),
            uri: request.uri().clone(),
        }
    }

    /// A child of `parent`: a recorded span (described by `describe`) when exporting
    /// and sampled, else only a span context that propagates. Sampling follows the
    /// parent's decision; a new trace is sampled at the configured ratio.
    fn start_span(
        &self,
        parent: &Context,
        name: Cow<'static, str>,
        kind: Kind,
        start: SystemTime,
        describe: impl FnOnce(&mut Recording),
    ) -> (Context, Option<Arc<LiveSpan>>) {
        let parent_span = parent.span();
        let parent_context = parent_span.span_context();
        let (trace_id, sampled, state) = if parent_context.is_valid() {
            (
                parent_context.trace_id(),
                parent_context.is_sampled(),
                parent_context.trace_state().clone(),
            )
        } else {
            let trace_id = TraceId::from(fastrand::u128(1..));
            (
                trace_id,
                ratio_sampled(trace_id, self.0.ratio),
                TraceState::NONE,
            )
        };
        let context = SpanContext::new(
            trace_id,
            SpanId::from(fastrand::u64(1..)),
            TraceFlags::default().with_sampled(sampled),
            false,
            state,
        );
        match &self.0.sink {
            Some(sink) if sampled => {
                let span = LiveSpan::start(sink, context, parent_context, kind, name, start, 384);
                span.record(describe);
                (parent.with_span(SpanHandle(span.clone())), Some(span))
            }
            _ => (parent.with_remote_span_context(context), None),
        }
    }
}

/// The ratio sampler of the OpenTelemetry specification: keyed on the trace id's low 63
/// bits, so every sidecar decides the same for one trace.
fn ratio_sampled(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or_default());
    (low >> 1) < bound
}

/// Request extension: the request span's context, shared by every attempt of the call.
/// Cloning the request's extensions (as retries do) keeps attempts numbered and parented.
#[derive(Clone)]
pub struct CallTrace(Arc<CallInner>);

struct CallInner {
    tracing: Tracing,
    cx: Context,
    /// The request span, when it is recorded (sampled, with a collector).
    span: Option<Arc<LiveSpan>>,
    attempts: AtomicU32,
    /// Set once routing found the service.
    service: OnceLock<Arc<str>>,
    direction: Direction,
    /// The first try, kept while the call records and `AttemptSpans::Retries` folds it
    /// into the call span: recorded as a span of its own if a retry follows.
    first_try: std::sync::Mutex<Option<FirstTry>>,
}

/// What is kept of a call's first try, to record its span if the call is retried.
struct FirstTry {
    started: SystemTime,
    ended: SystemTime,
    method: &'static str,
    endpoint: SocketAddr,
    outcome: TryOutcome,
}

/// How a try ended, as its span records it.
struct TryOutcome {
    status: Option<u16>,
    grpc_status: Option<u32>,
    /// `error.type` and the error's text, for tries that got no response.
    error: Option<(&'static str, String)>,
}

impl TryOutcome {
    fn of(result: &Result<Response<ProxyBody>, ProxyError>) -> Self {
        match result {
            Ok(response) => Self {
                status: Some(response.status().as_u16()),
                grpc_status: grpc_status(response.headers()),
                error: None,
            },
            Err(error) => Self {
                status: None,
                grpc_status: None,
                error: Some((error.reason(), error.to_string())),
            },
        }
    }

    fn record(self, recording: &mut Recording) {
        let attributes = &mut recording.attributes;
        if let Some(status) = self.status {
            attributes.int("http.response.status_code", i64::from(status));
            if let Some(code) = self.grpc_status {
                attributes.int("rpc.grpc.status_code", i64::from(code));
            }
            if let Some(error) = error_status(status, self.grpc_status, Direction::Outbound, None) {
                recording.set_status(error);
            }
        }
        if let Some((reason, text)) = self.error {
            recording.attributes.str("error.type", reason);
            recording.set_status(Status::error(text));
        }
    }
}

impl std::fmt::Debug for CallTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTrace")
            .field("span", self.0.cx.span().span_context())
            .finish_non_exhaustive()
    }
}

impl CallTrace {
    /// The request span's context.
    pub fn context(&self) -> &Context {
        &self.0.cx
    }
}

/// Names the service `request` was routed to, on its span and in its access log line.
pub fn routed<B>(request: &Request<B>, service: &Arc<str>) {
    let Some(call) = request.extensions().get::<CallTrace>() else {
        return;
    };
    let _ = call.0.service.set(service.clone());
    if let Some(span) = &call.0.span {
        span.record(|recording| recording.attributes.str("remora.service", service));
    }
}

/// One request's trace, from [`Tracing::start`] to [`RequestTrace::finish`].
#[derive(Debug)]
pub struct RequestTrace {
    call: CallTrace,
    started: Instant,
    request_id: HeaderValue,
    method: Method,
    uri: Uri,
}

impl RequestTrace {
    /// Runs `future` with the request span current (so that [`event`] lands on it),
    /// then [`finish`](Self::finish)es with its response.
    pub async fn run<F>(self, future: F) -> Response<ProxyBody>
    where
        F: std::future::Future<Output = Response<ProxyBody>>,
    {
        let response = future.with_context(self.call.0.cx.clone()).await;
        self.finish(response)
    }

    /// Records the answer on the span, ends it, writes the access log line and returns
    /// the response with `x-request-id` set. A gRPC answer whose status comes in its
    /// trailers is recorded (and logged) when its body ends instead; its access log
    /// `duration_ms` then runs to the end of the body.
    pub fn finish(self, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
        if !response.headers().contains_key(&REQUEST_ID) {
            response
                .headers_mut()
                .insert(&REQUEST_ID, self.request_id.clone());
        }
        let call = &self.call.0;
        let status = response.status().as_u16();
        let grpc_status = grpc_status(response.headers());
        let endpoint = response.extensions().get::<EndpointUsed>().map(|e| e.0);
        let observed = call.span.is_some() || call.tracing.0.access_log;
        let waits_for_trailers = observed
            && grpc_status.is_none()
            && grpc_status_at(response.headers()) == GrpcStatusAt::Trailers;
        if let Some(span) = &call.span {
            // One record: the answer's head now; its outcome too unless trailers bring it.
            span.record(|recording| {
                let attributes = &mut recording.attributes;
                attributes.int("http.response.status_code", i64::from(status));
                if let Some(endpoint) = endpoint {
                    attributes.display("remora.endpoint", endpoint);
                }
                if waits_for_trailers {
                    return;
                }
                if let Some(code) = grpc_status {
                    attributes.int("rpc.grpc.status_code", i64::from(code));
                }
                let reason = response.headers().get(ERROR_HEADER).map(header_text);
                if let Some(error) = error_status(status, grpc_status, call.direction, reason) {
                    recording.set_status(error);
                }
            });
        }
        if waits_for_trailers {
            let reason = response.headers().get(ERROR_HEADER).cloned();
            let waiting = trailers::RequestWaiting {
                trace: self,
                status,
                endpoint,
                reason,
            };
            watch(&mut response, Box::new(waiting));
            return response;
        }
        if let Some(span) = &call.span {
            span.end();
        }
        if call.tracing.0.access_log {
            self.access_log(status, grpc_status, endpoint);
        }
        response
    }

    fn access_log(&self, status: u16, grpc_status: Option<u32>, endpoint: Option<SocketAddr>) {
        let call = &self.call.0;
        let span = call.cx.span();
        let context = span.span_context();
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            trace_id = %context.trace_id(),
            span_id = %context.span_id(),
            request_id = %header_text(&self.request_id),
            direction = call.direction.as_str(),
            service = call.service.get().map_or("unknown", |s| &**s),
            method = %self.method,
            path = self.uri.path(),
            status,
            grpc_status,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            upstream = endpoint.map(tracing::field::display),
            "access"
        );
    }
}

/// One try of a call to one endpoint; ended with [`Attempt::end`].
#[derive(Debug)]
#[must_use = "an attempt span must be ended"]
pub struct Attempt(AttemptKind);

#[derive(Debug)]
enum AttemptKind {
    /// Nothing to record.
    None,
    /// A try with its own span.
    Span(Arc<LiveSpan>),
    /// The first try, folded into the call span (`AttemptSpans::Retries`); its facts
    /// are kept in case a retry follows.
    First {
        call: CallTrace,
        started: SystemTime,
        method: &'static str,
        endpoint: SocketAddr,
    },
}

/// Starts one try of `request` to `endpoint` and writes the trace context the upstream
/// continues into the request's headers. Call it once the request points at the
/// endpoint. Without a [`CallTrace`] in the request's extensions, it does nothing.
///
/// The try gets a span of its own (a child of the call span) unless it is a call's first
/// try under [`AttemptSpans::Retries`]: then the call span's own context is sent, and the
/// try becomes a span only if a retry follows.
pub fn attempt<B>(request: &mut Request<B>, endpoint: SocketAddr) -> Attempt {
    let Some(call) = request.extensions().get::<CallTrace>().cloned() else {
        return Attempt(AttemptKind::None);
    };
    let inner = &call.0;
    let tracing = &inner.tracing.0;
    let number = inner.attempts.fetch_add(1, Ordering::Relaxed) + 1;
    if tracing.attempt_spans == AttemptSpans::Retries {
        if number == 1 {
            tracing.propagators.inject(&inner.cx, request.headers_mut());
            if inner.span.is_none() {
                return Attempt(AttemptKind::None);
            }
            let method = method_name(request.method());
            return Attempt(AttemptKind::First {
                call,
                started: SystemTime::now(),
                method,
                endpoint,
            });
        }
        inner.record_first_try();
    }
    // The try's own facts only: what the request is (path, protocol, service, gRPC
    // method) is on the call span, its parent.
    let method = method_name(request.method());
    let (cx, span) = inner.tracing.start_span(
        &inner.cx,
        Cow::Borrowed("attempt"),
        Kind::Client,
        SystemTime::now(),
        |recording| attempt_attributes(recording, method, endpoint, number),
    );
    tracing.propagators.inject(&cx, request.headers_mut());
    match span {
        Some(span) => Attempt(AttemptKind::Span(span)),
        None => Attempt(AttemptKind::None),
    }
}

/// Records the attributes of an attempt span.
fn attempt_attributes(
    recording: &mut Recording,
    method: &'static str,
    endpoint: SocketAddr,
    number: u32,
) {
    let attributes = &mut recording.attributes;
    attributes.str("http.request.method", method);
    attributes.display("server.address", endpoint.ip());
    attributes.int("server.port", i64::from(endpoint.port()));
    attributes.display("remora.endpoint", endpoint);
    attributes.int("remora.attempt", i64::from(number));
}

impl CallInner {
    /// Records the kept first try as a span of its own (a retry is starting).
    fn record_first_try(&self) {
        let first = self
            .first_try
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(first) = first else {
            return;
        };
        let (_, span) = self.tracing.start_span(
            &self.cx,
            Cow::Borrowed("attempt"),
            Kind::Client,
            first.started,
            |recording| {
                attempt_attributes(recording, first.method, first.endpoint, 1);
                first.outcome.record(recording);
            },
        );
        if let Some(span) = span {
            span.end_at(first.ended);
        }
    }
}

impl Attempt {
    /// Records how the try ended (at response headers) and ends its span; a gRPC answer
    /// whose status comes in its trailers is recorded when its body ends instead.
    pub fn end(self, result: &mut Result<Response<ProxyBody>, ProxyError>) {
        match self.0 {
            AttemptKind::None => {}
            AttemptKind::Span(span) => {
                if let Some(waiting) = waiting_for_trailers(&span, result) {
                    if let Ok(response) = result {
                        watch(response, Box::new(waiting));
                    }
                    return;
                }
                span.record(|recording| TryOutcome::of(result).record(recording));
                span.end();
            }
            // No span unless a retry follows, and none follows a response that streams:
            // the call span records this try's trailers.
            AttemptKind::First {
                call,
                started,
                method,
                endpoint,
            } => {
                let first = FirstTry {
                    started,
                    ended: SystemTime::now(),
                    method,
                    endpoint,
                    outcome: TryOutcome::of(result),
                };
                *call
                    .0
                    .first_try
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(first);
            }
        }
    }
}

/// When `result` is a gRPC answer whose status comes in its trailers: the attempt span
/// (its HTTP status recorded now) to settle at the trailers.
fn waiting_for_trailers(
    span: &Arc<LiveSpan>,
    result: &Result<Response<ProxyBody>, ProxyError>,
) -> Option<trailers::AttemptWaiting> {
    let response = result.as_ref().ok()?;
    let headers = response.headers();
    if grpc_status(headers).is_some() || grpc_status_at(headers) != GrpcStatusAt::Trailers {
        return None;
    }
    let status = response.status().as_u16();
    span.record(|recording| {
        recording
            .attributes
            .int("http.response.status_code", i64::from(status));
    });
    Some(trailers::AttemptWaiting {
        span: span.clone(),
        status,
    })
}

/// Records a decision (retry, breaker, fallback, ...) as an event on the current span.
/// Build `attributes` only when [`recording`] says the span keeps them.
pub fn event(name: impl Into<Cow<'static, str>>, attributes: Vec<KeyValue>) {
    Context::map_current(|cx| cx.span().add_event(name, attributes));
}

/// Whether the current span records (is sampled); when not, events are discarded.
pub fn recording() -> bool {
    Context::map_current(|cx| cx.span().is_recording())
}

/// The span status for an answer: 5xx is an error; gRPC codes per the semantic
/// conventions (every non-OK code for clients; server-fault codes for servers).
fn error_status(
    status: u16,
    grpc_status: Option<u32>,
    direction: Direction,
    reason: Option<Cow<'_, str>>,
) -> Option<Status> {
    let describe = |what: String| match &reason {
        Some(reason) => Status::error(format!("{what} ({reason})")),
        None => Status::error(what),
    };
    if status >= 500 {
        return Some(describe(format!("HTTP {status}")));
    }
    let code = grpc_status?;
    let server_fault = matches!(code, 2 | 4 | 12 | 13 | 14 | 15);
    let failed = match direction {
        Direction::Outbound => code != 0,
        Direction::Inbound => server_fault,
    };
    failed.then(|| describe(format!("gRPC status {code}")))
}

/// Records the attributes of a request (call) span known when it starts.
fn call_attributes<B>(
    attributes: &mut span::Attributes,
    request: &Request<B>,
    direction: Direction,
    grpc: Option<(&str, &str)>,
) {
    attributes.str("http.request.method", request.method().as_str());
    attributes.str("url.path", request.uri().path());
    attributes.str(
        "network.protocol.version",
        protocol_version(request.version()),
    );
    attributes.str("remora.direction", direction.as_str());
    if let Some((host, port)) = destination(request) {
        attributes.str("server.address", host);
        if let Some(port) = port {
            attributes.int("server.port", i64::from(port));
        }
    }
    if let Some((service, method)) = grpc {
        attributes.str("rpc.system", "grpc");
        attributes.str("rpc.service", service);
        attributes.str("rpc.method", method);
    }
}

/// The host and port the caller addressed (`:authority` or `Host`), borrowed.
fn destination<B>(request: &Request<B>) -> Option<(&str, Option<u16>)> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    let authority = authority.rsplit('@').next()?;
    // An IPv6 literal keeps its brackets, as `http::uri::Authority::host` does.
    let (host, port) = match authority.find(']') {
        Some(end) if authority.starts_with('[') => {
            let (host, rest) = authority.split_at(end + 1);
            (host, rest.strip_prefix(':'))
        }
        _ => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port.and_then(|p| p.parse().ok())))
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A span name that needs no allocation (the semantic conventions' `{method}`).
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "HTTP",
    }
}

fn header_text(value: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}

/// A random UUID (version 4 layout), written without allocating a `String`.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..) & !(0xf000 << 64) & !(0xc << 60) | (0x4000 << 64) | (0x8 << 60);
    let mut out = [0u8; 36];
    let mut nibble = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *slot = b'-';
            continue;
        }
        *slot = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
        nibble += 1;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4_shaped_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let text = a.to_str().unwrap();
        assert_eq!(text.len(), 36);
        let groups: Vec<_> = text.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&text[14..15], "4");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
    }

    #[test]
    fn config_bounds_are_checked() {
        let mut config = TracingConfig {
            sampling_ratio: 1.5,
            ..Default::default()
        };
        assert!(config.validate().is_err());
        config.sampling_ratio = 0.5;
        config.endpoint = Some("localhost:4317".into());
        assert!(config.validate().is_err());
        config.endpoint = Some("https://collector:4317".into());
        let refused = config.validate().unwrap_err().to_string();
        assert!(
            refused.contains("TLS to the collector is not supported"),
            "{refused}"
        );
        config.endpoint = Some("http://127.0.0.1:4318".into());
        config.protocol = OtlpProtocol::HttpProtobuf;
        assert_eq!(
            collector_uri("http://127.0.0.1:4318", OtlpProtocol::HttpProtobuf).unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            collector_uri("http://collector:4318/custom", OtlpProtocol::HttpProtobuf).unwrap(),
            "http://collector:4318/custom"
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn error_status_follows_the_conventions() {
        assert!(error_status(503, None, Direction::Inbound, None).is_some());
        assert!(error_status(404, None, Direction::Inbound, None).is_none());
        assert!(error_status(200, Some(5), Direction::Inbound, None).is_none());
        assert!(error_status(200, Some(5), Direction::Outbound, None).is_some());
        assert!(error_status(200, Some(14), Direction::Inbound, None).is_some());
    }

    #[test]
    fn propagate_only_continues_the_callers_trace() {
        let tracing = Tracing::disabled();
        let mut request = Request::builder()
            .uri("/x")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .unwrap();
        let trace = tracing.start(&mut request, Direction::Inbound);
        let attempt = attempt(&mut request, "127.0.0.1:9".parse().unwrap());
        let sent = request.headers()["traceparent"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{sent}"
        );
        assert!(sent.ends_with("-01"));
        assert!(!sent.contains("b7ad6b7169203331"));
        assert!(request.headers().contains_key(&REQUEST_ID));
        attempt.end(&mut Err(ProxyError::Timeout(
            std::time::Duration::from_secs(1),
        )));
        let response = trace.finish(Response::new(ProxyBody::empty()));
        assert!(response.headers().contains_key(&REQUEST_ID));
    }
}
