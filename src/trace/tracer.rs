//! [`Tracing`]: one sidecar's tracer, sampler and propagators, and where a request's
//! trace starts.

use std::borrow::Cow;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use http::Request;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;

use crate::core::clock;
use crate::core::grpc::grpc_path;
use crate::core::labels::Direction;

use super::*;
use crate::access::{never_indexed, new_request_id, REQUEST_ID};

/// One sidecar's tracer, propagators and access-log switch; cheap to clone.
#[derive(Clone)]
pub struct Tracing(pub(super) Arc<Inner>);

pub(super) struct Inner {
    /// Where sampled spans go; `None` when no collector is configured: context is
    /// propagated, nothing recorded.
    pub(super) sink: Option<Sink>,
    /// Kept to flush on shutdown.
    flusher: Option<Flusher>,
    pub(super) propagators: Propagators,
    /// Fraction of new traces sampled.
    pub(super) ratio: f64,
    pub(super) access_log: bool,
    pub(super) attempt_spans: AttemptSpans,
    pub(super) metrics: TracingMetrics,
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
    /// Whether calls are written to the access log: a connection formats what its
    /// lines share (the caller's address) once, and only then.
    pub fn logs_access(&self) -> bool {
        self.0.access_log
    }

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
        let uri = collector_uri(endpoint, config.protocol)?;
        let collector = Collector::new(uri, config.protocol, config.tls.as_ref())
            .with_headers(config.headers.clone())
            .with_compression(config.compression);
        let limits = QueueLimits {
            queue_size: config.queue_size,
            batch_size: config.batch_size,
            delay: config.batch_delay,
            export_timeout: config.export_timeout,
        };
        let encoder = otlp::Encoder::new(&config.service_name, &config.resource);
        let backend = Backend::Encoder(collector, encoder);
        #[cfg(feature = "otlp-sdk-exporter")]
        let backend = sdk_backend(endpoint, config).unwrap_or(backend);
        let exporting = export::spawn(backend, limits, metrics.clone());
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
        let request_id = match request.headers_mut().get_mut(&REQUEST_ID) {
            Some(id) => {
                never_indexed(id);
                id.clone()
            }
            None => {
                let id = new_request_id();
                request.headers_mut().insert(&REQUEST_ID, id.clone());
                id
            }
        };
        let (parent, carried) = self.0.propagators.extract_carried(request.headers());
        let kind = match direction {
            Direction::Inbound => Kind::Server,
            Direction::Outbound => Kind::Client,
        };
        let grpc = grpc_path(request);
        let name = match grpc {
            Some((service, method)) => Cow::Owned(format!("{service}/{method}")),
            None => Cow::Borrowed(method_name(request.method())),
        };
        let (cx, span) = self.start_span(&parent, name, kind, SystemTime::now, |recording| {
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
            carried: std::sync::atomic::AtomicBool::new(carried),
            first_try: std::sync::Mutex::new(None),
            retried: std::sync::OnceLock::new(),
            request_bytes: std::sync::atomic::AtomicU64::new(0),
        }));
        request.extensions_mut().insert(call.clone());
        RequestTrace {
            call,
            started: clock::std_now(),
            request_id,
            method: request.method().clone(),
            uri: request.uri().clone(),
            peer_identity: None,
            client: None,
            host: request.headers().get(http::header::HOST).cloned(),
        }
    }

    /// A child of `parent`: a recorded span (described by `describe`) when exporting
    /// and sampled, else only a span context that propagates. Sampling follows the
    /// parent's decision; a new trace is sampled at the configured ratio.
    pub(super) fn start_span(
        &self,
        parent: &Context,
        name: Cow<'static, str>,
        kind: Kind,
        // Read only for a span that is recorded: most calls' spans only propagate.
        start: impl FnOnce() -> SystemTime,
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
                let span = LiveSpan::start(sink, context, parent_context, kind, name, start(), 384);
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

/// opentelemetry-otlp's exporter when `REMORA_OTLP_EXPORTER=sdk` asks for it and it can
/// serve `config`; otherwise `None` (remora's encoder), with a warning if it was asked.
#[cfg(feature = "otlp-sdk-exporter")]
fn sdk_backend(endpoint: &str, config: &TracingConfig) -> Option<Backend> {
    if !sdk_export::chosen() {
        return None;
    }
    match sdk_export::SdkExporter::new(endpoint, config) {
        Ok(exporter) => {
            // A warning: this variant is for measurements, not for production.
            tracing::warn!(
                collector = endpoint,
                "span export through opentelemetry-otlp ({}=sdk), a measurement variant",
                sdk_export::CHOICE
            );
            Some(Backend::Sdk(exporter))
        }
        Err(reason) => {
            tracing::warn!(
                collector = endpoint,
                %reason,
                "{}=sdk ignored: remora's encoder exports",
                sdk_export::CHOICE
            );
            None
        }
    }
}
