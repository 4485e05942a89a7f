//! The YAML schema of the `tracing` section: collector, sampling, propagation, the
//! export queue and the access log switch.

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
    /// `grpc` or `http` (HTTP/protobuf).
    #[serde(default)]
    pub protocol: OtlpProtocolName,
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
    /// How long one export may take.
    #[serde(default = "default_export_timeout", with = "super::scalar::duration")]
    pub export_timeout: Duration,
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
            protocol: OtlpProtocolName::default(),
            sampling: default_sampling(),
            propagate: Vec::new(),
            queue_size: default_queue_size(),
            batch_size: default_batch_size(),
            batch_delay: default_batch_delay(),
            export_timeout: default_export_timeout(),
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
fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_true() -> bool {
    true
}
