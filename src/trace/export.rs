//! Finished spans to the collector: a bounded queue, a batching task, counted drops.
//!
//! A span that ends is only pushed onto a bounded queue ([`Sink`]): when the queue is
//! full (the collector is slow or down) the span is dropped and counted, and the request
//! path never waits; only the span that fills a batch wakes the export task, which
//! otherwise wakes once per batch delay. That task drains the queue in batches, encodes each
//! batch ([`Encoder`]) and sends it to the collector ([`Collector`]: OTLP/gRPC over h2c,
//! or OTLP/HTTP with a protobuf body, each over TLS for an `https://` collector, with the
//! configured headers, gzip-compressed if asked) within a time limit. A batch refused
//! for now (an unreachable or busy collector) is sent again with backoff while that
//! limit allows; a batch that fails for good or times out is counted as dropped too.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, HOST, TE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry as MetricsRegistry;
use rustls::pki_types::ServerName;
use tokio::sync::{mpsc, oneshot, Notify};

use super::otlp::Encoder;
use super::span::FinishedSpan;
use super::{CollectorTls, Compression, OtlpProtocol};

/// Span export counters, registered in the sidecar's Prometheus registry.
#[derive(Debug, Clone, Default)]
pub struct TracingMetrics {
    /// Spans the collector accepted.
    pub exported: Counter,
    /// Spans lost: queue full, export failed or timed out.
    pub dropped: Counter,
    /// Export calls made again after a failure the collector may recover from.
    pub retries: Counter,
}

impl TracingMetrics {
    /// Registers `remora_spans_exported_total` and `remora_spans_dropped_total`
    /// (the registry carries the `remora` prefix).
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let metrics = Self::default();
        registry.register(
            "spans_exported",
            "Spans accepted by the OTLP collector",
            metrics.exported.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans dropped because the export queue was full or an export failed",
            metrics.dropped.clone(),
        );
        registry.register(
            "span_export_retries",
            "Span export calls made again after a transient failure (unreachable or busy collector)",
            metrics.retries.clone(),
        );
        metrics
    }
}

/// How the batching task behaves; the bounds come from [`TracingConfig`](super::TracingConfig).
#[derive(Debug, Clone, Copy)]
pub(super) struct QueueLimits {
    /// Spans waiting for export at most; more are dropped.
    pub queue_size: usize,
    /// Spans per export call at most.
    pub batch_size: usize,
    /// How long a partial batch waits for more spans.
    pub delay: Duration,
    /// How long one batch's export (its retries included) may take before its spans
    /// count as dropped.
    pub export_timeout: Duration,
}

/// Where finished spans go: the bounded export queue. A full queue drops the span and
/// counts it; the request path never waits. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Sink(Arc<Queue>);

#[derive(Debug)]
struct Queue {
    spans: Mutex<Vec<FinishedSpan>>,
    /// Woken when a batch is full (the task also wakes every `delay`).
    full: Notify,
    limits: QueueLimits,
    dropped: Counter,
}

impl Sink {
    /// Queues `span`, or drops and counts it when the queue is full. Only the span that
    /// fills a batch wakes the export task.
    pub(super) fn send(&self, span: FinishedSpan) {
        let queue = &*self.0;
        let mut spans = queue.spans.lock().unwrap_or_else(PoisonError::into_inner);
        if spans.len() >= queue.limits.queue_size {
            drop(spans);
            queue.dropped.inc();
            return;
        }
        spans.push(span);
        let queued = spans.len();
        drop(spans);
        if queued == queue.limits.batch_size {
            queue.full.notify_one();
        }
    }

    /// A sink whose spans nobody exports, for tests: `limits.queue_size` of them are
    /// kept, see [`take`](Self::take).
    #[cfg(test)]
    pub(super) fn detached(queue_size: usize) -> Self {
        Self(Arc::new(Queue {
            spans: Mutex::new(Vec::new()),
            full: Notify::new(),
            limits: QueueLimits {
                queue_size,
                batch_size: queue_size,
                delay: Duration::from_secs(1),
                export_timeout: Duration::from_secs(1),
            },
            dropped: Counter::default(),
        }))
    }

    /// Everything queued so far (the export task's, and tests').
    pub(super) fn take(&self) -> Vec<FinishedSpan> {
        let mut spans = self.0.spans.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *spans)
    }
}

/// Starts the batching task on the current tokio runtime, exporting through `backend`; it
/// ends once the [`Sink`] and every span holding a clone of it are gone.
pub(super) fn spawn(
    backend: Backend,
    limits: QueueLimits,
    metrics: TracingMetrics,
) -> (Sink, Flusher) {
    let sink = Sink(Arc::new(Queue {
        spans: Mutex::new(Vec::with_capacity(limits.batch_size)),
        full: Notify::new(),
        limits,
        dropped: metrics.dropped.clone(),
    }));
    let (control, commands) = mpsc::channel(4);
    let exporter = Exporter {
        backend,
        limits,
        metrics,
    };
    tokio::spawn(drain(exporter, sink.clone(), commands));
    (sink, Flusher(control))
}

/// Asks the batching task to export what it holds.
#[derive(Debug, Clone)]
pub(super) struct Flusher(mpsc::Sender<oneshot::Sender<()>>);

impl Flusher {
    /// Waits until every span queued before the call was exported (or dropped).
    pub(super) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.0.send(done).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// The batching task: wakes when a batch is full, when a flush is asked, or every
/// `delay`; exports what is queued, in batches; ends when it alone holds the queue.
async fn drain(
    mut exporter: Exporter,
    sink: Sink,
    mut commands: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let limits = exporter.limits;
    let mut asking = true;
    loop {
        let flush = tokio::select! {
            () = sink.0.full.notified() => None,
            done = commands.recv(), if asking => {
                asking = done.is_some();
                done
            }
            () = tokio::time::sleep(limits.delay) => None,
        };
        // Alone with the queue: nobody can add to it, so this export is the last.
        let last = Arc::strong_count(&sink.0) == 1;
        // A flush (shutdown) tries each batch once: nobody waits on a dead collector.
        let retry = flush.is_none() && !last;
        for batch in sink.take().chunks(limits.batch_size) {
            exporter.export(batch, retry).await;
        }
        if let Some(done) = flush {
            let _ = done.send(());
        }
        if last {
            return;
        }
    }
}

/// What turns a batch into an export call.
// One per sidecar, held by its export task: the variants' sizes do not matter.
#[cfg_attr(feature = "otlp-sdk-exporter", allow(clippy::large_enum_variant))]
pub(super) enum Backend {
    /// Remora's encoder and its collector connection.
    Encoder(Collector, Encoder),
    /// opentelemetry-otlp's exporter, for measurements (`sdk_export`); its own timeout
    /// and retry policy apply, not remora's.
    #[cfg(feature = "otlp-sdk-exporter")]
    Sdk(super::sdk_export::SdkExporter),
}

/// Encodes batches and sends them, counting the outcome.
struct Exporter {
    backend: Backend,
    limits: QueueLimits,
    metrics: TracingMetrics,
}

/// The first wait before an export is tried again; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Exporter {
    /// Exports `batch` within the export timeout, trying again after a transient failure
    /// (with `retry`; exponential backoff with jitter, or the collector's `Retry-After`)
    /// while the timeout allows, and counts the outcome. New spans meanwhile wait in the
    /// bounded queue, dropped when it is full: retries never grow memory.
    async fn export(&mut self, batch: &[FinishedSpan], retry: bool) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let (collector, encoder) = match &mut self.backend {
            Backend::Encoder(collector, encoder) => (collector, encoder),
            #[cfg(feature = "otlp-sdk-exporter")]
            Backend::Sdk(exporter) => {
                // The SDK's exporter applies its own timeout and retries.
                if let Err(error) = exporter.export(batch).await {
                    self.metrics.dropped.inc_by(count);
                    tracing::debug!(%error, spans = count, "span export failed");
                } else {
                    self.metrics.exported.inc_by(count);
                }
                return;
            }
        };
        let message = encoder.encode(batch, collector.prefix());
        let message = match collector.compress(message) {
            Ok(message) => Bytes::from(message),
            Err(error) => {
                self.metrics.dropped.inc_by(count);
                tracing::debug!(%error, spans = count, "span export: compression failed");
                return;
            }
        };
        let deadline = tokio::time::Instant::now() + self.limits.export_timeout;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let sent = tokio::time::timeout_at(deadline, collector.send(message.clone()));
            let error = match sent.await {
                Ok(Ok(())) => {
                    self.metrics.exported.inc_by(count);
                    return;
                }
                Ok(Err(error)) => error,
                Err(_) => {
                    self.metrics.dropped.inc_by(count);
                    collector.reset();
                    tracing::debug!(spans = count, "span export timed out");
                    return;
                }
            };
            collector.reset();
            let wait = error.retry_after().unwrap_or_else(|| jittered(backoff));
            let transient = error.is_transient();
            if !retry || !transient || tokio::time::Instant::now() + wait >= deadline {
                self.metrics.dropped.inc_by(count);
                tracing::debug!(%error, spans = count, transient, "span export failed");
                return;
            }
            tracing::debug!(%error, spans = count, ?wait, "span export failed; trying again");
            self.metrics.retries.inc();
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Between half of `backoff` and all of it, so that sidecars restarted together do not
/// retry together.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExportError {
    #[error("connect to the collector: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake with the collector: {0}")]
    Tls(#[source] std::io::Error),
    #[error("collector connection: {0}")]
    Http(#[from] hyper::Error),
    #[error("collector answered HTTP {status}")]
    Status {
        status: http::StatusCode,
        /// The collector's `Retry-After`, in seconds.
        retry_after: Option<Duration>,
    },
    #[error("collector answered gRPC status {code}: {message}")]
    Grpc { code: String, message: String },
}

impl ExportError {
    /// Whether the collector may take the same batch later (OTLP's retryable answers:
    /// gRPC CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE,
    /// UNAVAILABLE, DATA_LOSS; HTTP 429, 502, 503, 504; a connection that failed).
    fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Http(_) => true,
            Self::Tls(_) => false,
            Self::Status { status, .. } => matches!(status.as_u16(), 429 | 502 | 503 | 504),
            Self::Grpc { code, .. } => {
                matches!(code.as_str(), "1" | "4" | "8" | "10" | "11" | "14" | "15")
            }
        }
    }

    /// How long the collector asked to wait (HTTP `Retry-After` in seconds).
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The OTLP collector of one sidecar, over one kept connection (made again after a
/// failure).
pub(super) struct Collector {
    uri: Uri,
    protocol: OtlpProtocol,
    /// For an `https://` collector: the connector and the name its certificate carries.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Sent with every export (API keys of hosted backends).
    headers: Vec<(HeaderName, HeaderValue)>,
    compression: Compression,
    connection: Option<Connection>,
}

enum Connection {
    Grpc(http2::SendRequest<Full<Bytes>>),
    Http(http1::SendRequest<Full<Bytes>>),
}

/// The gRPC method of trace export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl Collector {
    /// A collector at `uri` (as [`collector_uri`](super::collector_uri) made it), over
    /// `tls` when given (the config's validation checked the server name).
    pub(super) fn new(uri: Uri, protocol: OtlpProtocol, tls: Option<&CollectorTls>) -> Self {
        let tls = tls.and_then(|tls| {
            let host = uri.host().unwrap_or_default();
            let name = tls.server_name.as_deref().unwrap_or(host);
            let name = name.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(name.to_string()).ok()?;
            let mut config = tls.config.clone();
            config.alpn_protocols = vec![match protocol {
                OtlpProtocol::Grpc => b"h2".to_vec(),
                OtlpProtocol::HttpProtobuf => b"http/1.1".to_vec(),
            }];
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        });
        Self {
            uri,
            protocol,
            tls,
            headers: Vec::new(),
            compression: Compression::None,
            connection: None,
        }
    }

    /// The same collector, sent `headers` with every export.
    pub(super) fn with_headers(mut self, headers: Vec<(HeaderName, HeaderValue)>) -> Self {
        self.headers = headers;
        self
    }

    /// The same collector, sent bodies compressed as `compression` says.
    pub(super) fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// The encoded message (after [`prefix`](Self::prefix) bytes of room) compressed as
    /// configured, the room kept; a gRPC frame's flag says whether it is compressed.
    fn compress(&self, mut message: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let prefix = self.prefix();
        if self.compression == Compression::Gzip {
            use std::io::Write as _;
            let mut gzip = flate2::write::GzEncoder::new(
                Vec::with_capacity(prefix + message.len() / 4),
                flate2::Compression::fast(),
            );
            gzip.get_mut().resize(prefix, 0);
            gzip.write_all(&message[prefix..])?;
            message = gzip.finish()?;
            if prefix > 0 {
                message[0] = 1;
            }
        }
        if prefix > 0 {
            let len = u32::try_from(message.len() - prefix).unwrap_or(u32::MAX);
            message[1..5].copy_from_slice(&len.to_be_bytes());
        }
        Ok(message)
    }

    /// Bytes to leave before the message: the gRPC frame header.
    fn prefix(&self) -> usize {
        match self.protocol {
            OtlpProtocol::Grpc => 5,
            OtlpProtocol::HttpProtobuf => 0,
        }
    }

    /// Forgets the connection, so the next export makes a new one.
    fn reset(&mut self) {
        self.connection = None;
    }

    /// Sends one message as [`compress`](Self::compress) made it.
    async fn send(&mut self, message: Bytes) -> Result<(), ExportError> {
        let mut connection = match self.connection.take() {
            Some(connection) if connection.is_usable() => connection,
            _ => self.connect().await?,
        };
        let result = match &mut connection {
            Connection::Grpc(send) => grpc_call(send, self.grpc_request(message)).await,
            Connection::Http(send) => http_call(send, self.http_request(message)).await,
        };
        if result.is_ok() {
            self.connection = Some(connection);
        }
        result
    }

    /// An OTLP/gRPC export request: the message in one gRPC frame.
    fn grpc_request(&self, message: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(message));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.grpc_uri();
        let headers = request.headers_mut();
        self.add_headers(headers);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        if self.compression == Compression::Gzip {
            headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        }
        request
    }

    /// The configured headers, before remora's own (which win).
    fn add_headers(&self, headers: &mut http::HeaderMap) {
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// An OTLP/HTTP export request.
    fn http_request(&self, message: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(message));
        *request.method_mut() = Method::POST;
        if let Some(path) = self.uri.path_and_query() {
            *request.uri_mut() = Uri::from(path.clone());
        }
        let headers = request.headers_mut();
        self.add_headers(headers);
        headers.insert(HOST, self.host());
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        if self.compression == Compression::Gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        request
    }

    fn grpc_uri(&self) -> Uri {
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static(EXPORT_PATH));
        Uri::from_parts(parts).unwrap_or_else(|_| self.uri.clone())
    }

    fn host(&self) -> HeaderValue {
        self.uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("localhost"))
    }

    async fn connect(&self) -> Result<Connection, ExportError> {
        let host = self.uri.host().unwrap_or("localhost");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        let port = self.uri.port_u16().unwrap_or(default_port);
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(ExportError::Connect)?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => self.handshake(TokioIo::new(stream)).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(ExportError::Tls)?;
                self.handshake(TokioIo::new(stream)).await
            }
        }
    }

    /// The HTTP connection of the protocol over `io`, its task spawned.
    async fn handshake<I>(&self, io: I) -> Result<Connection, ExportError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        Ok(match self.protocol {
            OtlpProtocol::Grpc => {
                let (send, connection) = http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "collector connection ended");
                    }
                });
                Connection::Grpc(send)
            }
            OtlpProtocol::HttpProtobuf => {
                let (send, connection) = http1::handshake(io).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "collector connection ended");
                    }
                });
                Connection::Http(send)
            }
        })
    }
}

impl Connection {
    fn is_usable(&self) -> bool {
        match self {
            Self::Grpc(send) => !send.is_closed(),
            Self::Http(send) => !send.is_closed(),
        }
    }
}

/// One OTLP/gRPC export: HTTP 200 and `grpc-status: 0` (in the headers of a
/// trailers-only answer, or in the trailers).
async fn grpc_call(
    send: &mut http2::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(), ExportError> {
    send.ready().await?;
    let response = send.send_request(request).await?;
    if response.status() != http::StatusCode::OK {
        return Err(ExportError::Status {
            status: response.status(),
            retry_after: None,
        });
    }
    let (head, body) = response.into_parts();
    let trailers = match head.headers.get(&crate::core::grpc::GRPC_STATUS) {
        Some(_) => head.headers,
        None => body
            .collect()
            .await?
            .trailers()
            .cloned()
            .unwrap_or_default(),
    };
    let text = |name: &str| {
        trailers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    match text("grpc-status").as_deref() {
        Some("0") => Ok(()),
        code => Err(ExportError::Grpc {
            code: code.unwrap_or("missing").to_string(),
            message: text("grpc-message").unwrap_or_default(),
        }),
    }
}

/// One OTLP/HTTP export: any 2xx answer (its body, a partial-success report, is read
/// and ignored).
async fn http_call(
    send: &mut http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(), ExportError> {
    send.ready().await?;
    let response = send.send_request(request).await?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    response.into_body().collect().await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(ExportError::Status {
            status,
            retry_after,
        })
    }
}
