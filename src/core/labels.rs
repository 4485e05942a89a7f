//! Metric label types every floor counts with, and per-service families.
//!
//! Label values are cheap to build on the hot path: a direction enum, the service and
//! route names as shared `Arc<str>`s, the status and gRPC code as numbers.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as MetricsRegistry;

/// Which way a request travels through the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From another service's sidecar to the local app.
    Inbound,
    /// From the local app to another service.
    Outbound,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// A service name as a label value, shared rather than copied per request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceLabel(pub Arc<str>);

impl EncodeLabelValue for ServiceLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// Longest service name: a DNS name's length.
pub const MAX_SERVICE_NAME_LEN: usize = 253;

/// How a service name is spelled, for the message that refuses one.
pub const SERVICE_NAME_RULE: &str = "use lowercase letters, digits, `-`, `_` and `.`, \
     starting with a letter or digit (at most 253 characters)";

/// Whether `name` is spelled as a service name must be. Service names appear in Host
/// headers, metric labels, logs and identities (a URI path): the config refuses any
/// other spelling, and so does an identity.
pub fn is_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && name.len() <= MAX_SERVICE_NAME_LEN
}

/// The `route` label of requests no configured route takes (and of those no service
/// takes).
pub const DEFAULT_ROUTE: &str = "default";

/// A route's name as a label value, shared rather than copied per request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteLabel(pub Arc<str>);

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// The gRPC status of an answer, as the `grpc_code` label: bounded to the codes of the
/// gRPC spec, so an upstream cannot grow the label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrpcCode {
    /// Not a gRPC answer: the empty label.
    NotGrpc,
    /// A code of the gRPC spec: 0 (OK) to 16 (UNAUTHENTICATED).
    Code(u8),
    /// A gRPC answer whose status is missing, malformed or outside the spec's codes.
    Unknown,
}

impl GrpcCode {
    /// The highest code the gRPC spec defines (UNAUTHENTICATED).
    pub const MAX: u8 = 16;

    /// The label of a gRPC answer whose status is `code` (`None`: it has none).
    pub fn of(code: Option<u32>) -> Self {
        match code.and_then(|code| u8::try_from(code).ok()) {
            Some(code) if code <= Self::MAX => Self::Code(code),
            _ => Self::Unknown,
        }
    }
}

impl EncodeLabelValue for GrpcCode {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self {
            Self::NotGrpc => Ok(()),
            Self::Code(code) => write!(encoder, "{code}"),
            Self::Unknown => encoder.write_str("unknown"),
        }
    }
}

/// Whether an answer is a success or a failure, as the `classification` label: gRPC
/// answers by their status (anything but OK fails, whatever the HTTP status), others by
/// their HTTP status (5xx fails). A gRPC failure is an HTTP 200, so a dashboard's error
/// ratio must read this, not `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Classification {
    /// A 1xx-4xx answer, or gRPC status OK.
    Success,
    /// A 5xx answer, or a gRPC status other than OK (or none at all).
    Failure,
}

impl Classification {
    /// The class of an answer with HTTP `status` and `grpc_code`.
    pub fn of(status: u16, grpc_code: GrpcCode) -> Self {
        let failed = match grpc_code {
            GrpcCode::NotGrpc => status >= 500,
            GrpcCode::Code(code) => code != 0 || status >= 500,
            GrpcCode::Unknown => true,
        };
        if failed {
            Self::Failure
        } else {
            Self::Success
        }
    }
}

impl EncodeLabelValue for Classification {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Success => "success",
            Self::Failure => "failure",
        })
    }
}

/// Labels of a metric counted per service and nothing else (shed calls, rate-limited
/// calls, retries, ejections, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ByService {
    /// The service.
    pub service: ServiceLabel,
}

impl ByService {
    /// The labels of `service`.
    pub fn of(service: &Arc<str>) -> Self {
        Self {
            service: ServiceLabel(service.clone()),
        }
    }
}

/// A family of `M` labelled by service only.
pub type PerService<M> = Family<ByService, M>;

/// Registers a new per-service family under `name` and returns it.
pub fn register_per_service<M>(
    registry: &mut MetricsRegistry,
    name: &str,
    help: &str,
) -> PerService<M>
where
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let family = PerService::<M>::default();
    registry.register(name, help, family.clone());
    family
}
