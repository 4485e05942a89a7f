//! What a tracer is told: collector, protocol, sampling, propagation, queue bounds,
//! and the checks that make the request path trust them.

use std::time::Duration;

use http::Uri;

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

/// Compression of export bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// As encoded.
    #[default]
    None,
    /// gzip: a compressed gRPC frame with `grpc-encoding: gzip`, or an HTTP body with
    /// `content-encoding: gzip`.
    Gzip,
}

/// A trace-context header format written toward upstreams (every format is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// W3C `traceparent` / `tracestate` (always written; `baggage` is passed on as sent).
    W3c,
    /// Zipkin B3, multi-header form (`X-B3-TraceId`, ...).
    B3,
    /// Jaeger `uber-trace-id`.
    Jaeger,
}

/// TLS toward an `https://` collector.
#[derive(Debug, Clone)]
pub struct CollectorTls {
    /// Roots, optional client certificate and provider; the exporter sets the ALPN
    /// protocol (`h2` for gRPC, `http/1.1` for HTTP).
    pub config: rustls::ClientConfig,
    /// The name sent as SNI and checked against the certificate (default: the
    /// endpoint's host).
    pub server_name: Option<String>,
}

/// Tracing settings of one sidecar; `config/` builds it from YAML.
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// The collector, e.g. `http://127.0.0.1:4317`; `None` propagates context without
    /// recording or exporting spans.
    pub endpoint: Option<String>,
    /// TLS toward the collector: required by an `https://` endpoint, refused with an
    /// `http://` one.
    pub tls: Option<CollectorTls>,
    /// How to talk to the collector.
    pub protocol: OtlpProtocol,
    /// Fraction of new traces sampled, in `[0, 1]`; a caller's decision is followed.
    pub sampling_ratio: f64,
    /// Formats written toward upstreams besides W3C.
    pub propagate: Vec<Propagation>,
    /// The resource's `service.name`: the service this sidecar runs beside.
    pub service_name: String,
    /// More resource attributes (`service.instance.id`, configured ones), in order.
    pub resource: Vec<(String, String)>,
    /// Headers sent with every export (API keys of hosted backends).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Compression of export bodies.
    pub compression: Compression,
    /// Finished spans waiting for export at most; beyond it spans are dropped and counted.
    pub queue_size: usize,
    /// Spans per export call at most.
    pub batch_size: usize,
    /// How long a partial batch waits before it is exported.
    pub batch_delay: Duration,
    /// How long one batch's export may take, retries included; its spans count as
    /// dropped after that.
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
            tls: None,
            protocol: OtlpProtocol::Grpc,
            sampling_ratio: 1.0,
            propagate: vec![Propagation::W3c],
            service_name: "remora".into(),
            resource: Vec::new(),
            headers: Vec::new(),
            compression: Compression::None,
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
    /// The endpoint is not an `http://` or `https://` URL, or its scheme does not
    /// match the TLS config.
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
            let uri = collector_uri(endpoint, self.protocol)?;
            let refuse = |reason: &str| TracingError::Endpoint {
                endpoint: endpoint.clone(),
                reason: reason.to_string(),
            };
            match (uri.scheme_str() == Some("https"), &self.tls) {
                (true, None) => return Err(refuse("an https:// collector needs a TLS config")),
                (false, Some(_)) => return Err(refuse("TLS is configured: write https://")),
                (true, Some(tls)) => {
                    let host = uri.host().unwrap_or_default();
                    let name = tls.server_name.as_deref().unwrap_or(host);
                    let name = name.trim_start_matches('[').trim_end_matches(']');
                    rustls::pki_types::ServerName::try_from(name)
                        .map_err(|_| refuse(&format!("{name:?} is not a valid TLS server name")))?;
                }
                (false, None) => {}
            }
        }
        Ok(())
    }
}

/// The URI to export to: `endpoint`, with `/v1/traces` added for HTTP when it has no path.
pub(super) fn collector_uri(endpoint: &str, protocol: OtlpProtocol) -> Result<Uri, TracingError> {
    let refuse = |reason: String| TracingError::Endpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    let uri: Uri = endpoint.parse().map_err(|e| refuse(format!("{e}")))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.authority().is_none() {
        return Err(refuse(
            "write it like `http://127.0.0.1:4317` or `https://collector:4317`".into(),
        ));
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
