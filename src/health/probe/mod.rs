//! One probe of one endpoint: what kinds there are, and what a failed one says.
//!
//! A [`Probe`] is the description a config gives; [`PreparedProbe`] is the same probe
//! with its parts parsed once (path, host header), made by
//! [`HealthCheckConfig::try_new`](super::HealthCheckConfig::try_new). Every probe opens its
//! own connection and closes it after: a probe says whether a new connection can be served,
//! which a pooled connection would not, and probes are rare next to requests.

mod grpc;
mod http;
mod tcp;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use ::http::uri::PathAndQuery;
use ::http::{HeaderValue, StatusCode};

use super::HealthCheckConfigError;
use crate::upstream::{TlsError, UpstreamTls};

/// What a health check asks of each endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET <path>` over HTTP/1.1; healthy when the status is in one of `expected`.
    Http {
        /// Path (and query) requested, starting with `/`.
        path: String,
        /// Statuses that mean healthy (see [`Probe::default_expected`]).
        expected: Vec<RangeInclusive<u16>>,
        /// The `Host` header sent; the endpoint's address when `None`.
        host: Option<String>,
    },
    /// A TCP connection accepted within the timeout.
    Tcp,
    /// `grpc.health.v1.Health/Check` over h2c; healthy when the answer is `SERVING`.
    Grpc {
        /// The service asked about; empty asks about the server as a whole.
        service: String,
    },
}

impl Probe {
    /// An HTTP probe of `path` expecting the default statuses and sending no custom host.
    pub fn http(path: impl Into<String>) -> Self {
        Self::Http {
            path: path.into(),
            expected: Self::default_expected(),
            host: None,
        }
    }

    /// The statuses an HTTP probe expects unless told otherwise: 200 to 399.
    pub fn default_expected() -> Vec<RangeInclusive<u16>> {
        vec![200..=399]
    }

    /// `http`, `tcp` or `grpc`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Http { .. } => "http",
            Self::Tcp => "tcp",
            Self::Grpc { .. } => "grpc",
        }
    }

    /// The probe with its parts parsed, or what is wrong with it.
    pub(super) fn prepare(&self) -> Result<PreparedProbe, HealthCheckConfigError> {
        match self {
            Self::Http {
                path,
                expected,
                host,
            } => http::HttpProbe::try_new(path, expected, host.as_deref()).map(PreparedProbe::Http),
            Self::Tcp => Ok(PreparedProbe::Tcp),
            Self::Grpc { service } => Ok(PreparedProbe::Grpc {
                service: service.clone(),
            }),
        }
    }
}

/// A [`Probe`] ready to run: valid by construction.
#[derive(Debug, Clone)]
pub(super) enum PreparedProbe {
    Http(http::HttpProbe),
    Tcp,
    Grpc { service: String },
}

impl PreparedProbe {
    /// Probes `addr` once, over `tls` when given (as requests reach it), giving up after
    /// `timeout` (connecting included). A TCP probe only connects: TLS is not its
    /// business.
    pub(super) async fn run(
        &self,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        timeout: Duration,
    ) -> Result<(), ProbeError> {
        let probe = async {
            match self {
                Self::Http(http) => http.check(addr, tls, timeout).await,
                Self::Tcp => tcp::check(addr).await,
                Self::Grpc { service } => grpc::check(addr, tls, service, timeout).await,
            }
        };
        tokio::time::timeout(timeout, probe)
            .await
            .unwrap_or(Err(ProbeError::Timeout(timeout)))
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer within the probe's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TCP connection failed.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The HTTP exchange failed.
    #[error("http: {0}")]
    Http(#[source] hyper::Error),
    /// The endpoint closed the connection before answering.
    #[error("connection closed before an answer")]
    Closed,
    /// The endpoint answered with a status the probe does not expect.
    #[error("status {0} is not among the expected ones")]
    Status(StatusCode),
    /// The gRPC connection could not be made.
    #[error("grpc connect: {0}")]
    GrpcTransport(#[source] tonic::transport::Error),
    /// The gRPC call failed.
    #[error("grpc: {}", .0.message())]
    Grpc(#[source] tonic::Status),
    /// The gRPC health service answered something other than `SERVING`.
    #[error("grpc health status is {0}")]
    NotServing(&'static str),
}

impl ProbeError {
    /// The result label of a failed probe: `timeout` or `failure`.
    pub(super) fn result_label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            _ => "failure",
        }
    }
}

/// Checks a status range of an HTTP probe: within 100..=599 and not reversed.
fn valid_status_range(range: &RangeInclusive<u16>) -> bool {
    (100..=599).contains(range.start())
        && (100..=599).contains(range.end())
        && range.start() <= range.end()
}

/// Parses an HTTP probe's path: origin form, starting with `/`.
fn parse_path(path: &str) -> Result<PathAndQuery, HealthCheckConfigError> {
    if !path.starts_with('/') {
        return Err(HealthCheckConfigError::HttpPath(path.to_string()));
    }
    PathAndQuery::try_from(path).map_err(|_| HealthCheckConfigError::HttpPath(path.to_string()))
}

/// Parses an HTTP probe's `Host` header.
fn parse_host(host: &str) -> Result<HeaderValue, HealthCheckConfigError> {
    if host.is_empty() {
        return Err(HealthCheckConfigError::HttpHost(host.to_string()));
    }
    HeaderValue::try_from(host).map_err(|_| HealthCheckConfigError::HttpHost(host.to_string()))
}
