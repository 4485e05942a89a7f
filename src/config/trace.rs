//! The YAML schema of the `tracing` section: collector, sampling, propagation, the
//! export queue and the access log switch.
//!
//! The OpenTelemetry SDK's environment variables (`OTEL_EXPORTER_OTLP_*`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) fill what the file leaves unset:
//! see [`otel_env`](super::otel_env).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;

/// Trace export and propagation.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    /// The OTLP collector (`http://127.0.0.1:4317` for gRPC, `http://127.0.0.1:4318` for
    /// HTTP, `https://...` over TLS). Without it, trace context is still propagated but
    /// no span is exported.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// TLS toward an `https://` collector: its CA, a client certificate. Without it, an
    /// `https://` collector is checked against the system's roots.
    #[serde(default)]
    pub tls: Option<super::TlsSection>,
    /// `grpc` or `http` (HTTP/protobuf); default `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocolName>,
    /// Headers sent with every export (a hosted backend's API key). Secret: `/config`
    /// shows the names only.
    #[serde(default, skip_serializing_if = "ExportHeaders::is_empty")]
    pub headers: ExportHeaders,
    /// `gzip` or `none` (the default): compression of export bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<CompressionName>,
    /// Resource attributes of every span besides `service.name` (the `service`, unless
    /// set here) and `service.instance.id` (the registration's id, else a random UUID
    /// per process, unless set here): `deployment.environment.name: prod`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource: BTreeMap<String, String>,
    /// Share of new traces recorded; a caller's sampling decision is followed.
    #[serde(default = "default_sampling")]
    pub sampling: Percent,
    /// Formats written toward upstreams besides W3C: `b3`, `jaeger` (for older apps).
    /// Every format is read from callers.
    #[serde(default)]
    pub propagate: Vec<PropagationName>,
    /// Finished spans queued for export at most; beyond it spans are dropped and counted.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Spans per export call at most.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a partial batch waits.
    #[serde(default = "default_batch_delay", with = "super::scalar::duration")]
    pub batch_delay: Duration,
    /// How long one batch's export may take, its retries included (default 10s).
    #[serde(
        default,
        with = "super::scalar::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub export_timeout: Option<Duration>,
    /// One `remora::access` log line per request.
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// Which tries of a call get their own span: `retries` (the tries of retried calls
    /// only) or `always`.
    #[serde(default)]
    pub attempt_spans: AttemptSpansName,
}

/// Which tries of a call get their own span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptSpansName {
    /// The tries of retried calls only.
    #[default]
    Retries,
    /// Every try.
    Always,
}

impl Default for TracingSection {
    fn default() -> Self {
        Self {
            endpoint: None,
            tls: None,
            protocol: None,
            headers: ExportHeaders::default(),
            compression: None,
            resource: BTreeMap::new(),
            sampling: default_sampling(),
            propagate: Vec::new(),
            queue_size: default_queue_size(),
            batch_size: default_batch_size(),
            batch_delay: default_batch_delay(),
            export_timeout: None,
            access_log: true,
            attempt_spans: AttemptSpansName::default(),
        }
    }
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocolName {
    /// OTLP/gRPC.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

/// Compression of export bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionName {
    /// Bodies as encoded.
    #[default]
    None,
    /// gzip (gRPC `grpc-encoding: gzip`, HTTP `content-encoding: gzip`).
    Gzip,
}

/// Headers of every export, by name. Their values are secrets (API keys): `Debug`
/// shows the names only, and `/config` redacts the values.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct ExportHeaders(pub BTreeMap<String, String>);

impl ExportHeaders {
    /// No header set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ExportHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// A trace-context format written toward upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PropagationName {
    /// W3C tracecontext (always written).
    W3c,
    /// Zipkin B3 (multi-header).
    B3,
    /// Jaeger `uber-trace-id`.
    Jaeger,
}

fn default_sampling() -> Percent {
    Percent(1.0)
}
fn default_queue_size() -> usize {
    2048
}
fn default_batch_size() -> usize {
    512
}
fn default_batch_delay() -> Duration {
    Duration::from_secs(1)
}
/// The export timeout when neither the file nor the environment sets one.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
fn default_true() -> bool {
    true
}
