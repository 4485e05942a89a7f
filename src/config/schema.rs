//! The YAML schema as serde types.
//!
//! Every struct denies unknown fields so that a typo is an error with a location, never a
//! silently ignored option. Defaults live here, next to the field they belong to, and
//! `config/reference.yaml` documents each of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::protocol::UpstreamProtocol;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the local service this sidecar stands beside (used in logs and metrics).
    #[serde(default = "default_service_name")]
    pub service: String,
    /// Admin listener: health, readiness, metrics, effective config.
    #[serde(default)]
    pub admin: AdminSection,
    /// Traffic from other services' sidecars to the local app.
    #[serde(default)]
    pub inbound: Option<InboundSection>,
    /// The shared outbound listener that routes the local app's calls by Host / :authority.
    #[serde(default)]
    pub outbound: Option<OutboundSection>,
    /// Named service registries that services discover endpoints from.
    #[serde(default)]
    pub registries: BTreeMap<String, super::RegistrySection>,
    /// Registers the local app in a registry while the sidecar runs.
    #[serde(default)]
    pub register: Option<super::RegisterSection>,
    /// Named resilience policies that services, routes and `inbound` reference.
    #[serde(default)]
    pub policies: super::PoliciesSection,
    /// Named upstream services the local app may call. Nothing else is reachable.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSection>,
    /// Limits that protect every listener from hostile or broken clients.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Upstream connection behaviour shared by every service.
    #[serde(default)]
    pub upstream: UpstreamSection,
    /// How names among endpoints and `inbound.app` are resolved.
    #[serde(default)]
    pub resolver: super::ResolverSection,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "default_drain_timeout", with = "super::scalar::duration")]
    pub drain_timeout: Duration,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// Trace propagation and OTLP export.
    #[serde(default)]
    pub tracing: super::TracingSection,
    /// The sidecar's own certificate, key and trust bundle: its identity in the mesh.
    #[serde(default)]
    pub tls: Option<super::MeshTlsSection>,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the admin listener.
    #[serde(default = "default_admin_listen", with = "super::scalar::socket_addr")]
    pub listen: SocketAddr,
}

/// The inbound direction: other sidecars -> local app.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InboundSection {
    /// Address the inbound listener binds.
    #[serde(
        default = "default_inbound_listen",
        with = "super::scalar::socket_addr"
    )]
    pub listen: SocketAddr,
    /// Address of the local app (normally `127.0.0.1:<app port>`), or a `host:port`
    /// name resolved like a service's endpoints.
    pub app: super::Destination,
    /// Protocol spoken to the local app; `tcp` forwards each connection's bytes as they
    /// are (no HTTP).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Overall time limit of a call to the app: a `policies.timeouts` name or a duration.
    #[serde(default)]
    pub timeout: Option<String>,
    /// A `policies.rate_limits` name applied to callers.
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// Most calls in flight to the app; excess calls are shed at once with 503.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// A `policies.fallbacks` name.
    #[serde(default)]
    pub fallback: Option<String>,
    /// A `policies.faults` name.
    #[serde(default)]
    pub fault: Option<String>,
    /// `strict`, `permissive` or `off` (default: `strict` when the sidecar has a
    /// certificate, else `off`).
    #[serde(default)]
    pub tls: Option<super::InboundTlsMode>,
    /// Who may call the app (where no `authorize` rule matches): service names of the
    /// trust domain, SPIFFE IDs, or `"*"` for the whole trust domain (the default).
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Per-route callers, first match wins; a request no rule matches is under `allow`.
    #[serde(default)]
    pub authorize: Vec<super::AuthorizeRule>,
    /// With `protocol: tcp`: the idle timeout, connection cap and connect attempts of
    /// the raw TCP forwarding to the app.
    #[serde(default)]
    pub tcp: Option<super::TcpSection>,
}

/// The shared outbound listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSection {
    /// Address the shared outbound listener binds.
    #[serde(
        default = "default_outbound_listen",
        with = "super::scalar::socket_addr"
    )]
    pub listen: SocketAddr,
}

/// One upstream service.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// A dedicated outbound port for this service: everything arriving there goes to it.
    #[serde(default, with = "super::scalar::opt_socket_addr")]
    pub listen: Option<SocketAddr>,
    /// Host names (without port) that route to this service on the shared outbound port.
    /// The service's own name always matches.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// When set, only these path prefixes route to this service on the shared port.
    /// The longest matching prefix among services sharing a host wins.
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    /// Protocol spoken to the upstream: `http1`, `http2`, or `auto` (the caller's); or
    /// `tcp`: the `listen` port forwards raw TCP to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Static endpoint list (`ip:port` or `host:port`, a name standing for every
    /// address it resolves to); a service has these or `discovery`.
    #[serde(default)]
    pub endpoints: Vec<super::Destination>,
    /// Endpoints from a registry instead of a static list.
    #[serde(default)]
    pub discovery: Option<super::DiscoveryRef>,
    /// How calls are spread over the endpoints (default: P2C peak-EWMA).
    #[serde(default)]
    pub balancer: super::BalancerSection,
    /// Active health checks; unhealthy endpoints leave balancing.
    #[serde(default)]
    pub health_check: Option<super::HealthCheckSection>,
    /// Passive outlier ejection; failing endpoints leave balancing for a while.
    #[serde(default)]
    pub outlier_detection: Option<super::OutlierSection>,
    /// Overall time limit of a call: a `policies.timeouts` name or a duration (`2s`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// A `policies.retries` name.
    #[serde(default)]
    pub retry: Option<String>,
    /// A `policies.breakers` name for the service's circuit breaker.
    #[serde(default)]
    pub breaker: Option<String>,
    /// A `policies.breakers` name for one breaker per endpoint (an open one takes its
    /// endpoint out of balancing instead of failing calls).
    #[serde(default)]
    pub endpoint_breaker: Option<String>,
    /// A `policies.rate_limits` name.
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// Most calls in flight to the service; excess calls are shed at once with 503.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// A `policies.fallbacks` name.
    #[serde(default)]
    pub fallback: Option<String>,
    /// A `policies.faults` name.
    #[serde(default)]
    pub fault: Option<String>,
    /// Path prefixes or gRPC methods with policies of their own; the first match wins.
    #[serde(default)]
    pub routes: Vec<super::RouteSection>,
    /// TLS to the service's endpoints: mutual TLS with a meshed sidecar, or TLS to an
    /// external server. Without it, an endpoint that its registry says speaks mutual TLS
    /// (a remora that registered itself) gets it anyway.
    #[serde(default)]
    pub tls: Option<super::TlsSection>,
    /// With `protocol: tcp`: the idle timeout, connection cap and connect attempts of the
    /// service's raw TCP forwarding.
    #[serde(default)]
    pub tcp: Option<super::TcpSection>,
}

/// Per-listener protections.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Maximum open connections per listener; further connections are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a complete HTTP/1 request head (slowloris protection).
    #[serde(
        default = "default_header_read_timeout",
        with = "super::scalar::duration"
    )]
    pub header_read_timeout: Duration,
    /// Largest request head accepted, in bytes; beyond it the answer is 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Maximum concurrent HTTP/2 streams per client connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
}

/// Upstream connection pool settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Time allowed to establish a TCP connection to an endpoint.
    #[serde(default = "default_connect_timeout", with = "super::scalar::duration")]
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    #[serde(
        default = "default_pool_idle_timeout",
        with = "super::scalar::duration"
    )]
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per endpoint.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_endpoint: usize,
    /// HTTP/2 connections opened per endpoint at most; calls go to the least loaded.
    #[serde(default = "default_http2_connections")]
    pub http2_connections_per_endpoint: usize,
    /// Streams on one HTTP/2 connection before another is opened (the server's own
    /// limit applies too).
    #[serde(default = "default_http2_streams")]
    pub http2_streams_per_connection: usize,
    /// Connections being established to one endpoint at once, at most; calls beyond
    /// wait in the endpoint's pending queue.
    #[serde(default = "default_max_connecting")]
    pub max_connecting_per_endpoint: usize,
    /// Calls waiting for a connection to one endpoint, at most; more are refused at once.
    #[serde(default = "default_max_pending")]
    pub max_pending_per_endpoint: usize,
    /// How long a call waits in the pending queue before it fails.
    #[serde(default = "default_pending_timeout", with = "super::scalar::duration")]
    pub pending_timeout: Duration,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Level filter (`info`, `remora=debug,hyper=warn`); `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `plain` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

fn default_service_name() -> String {
    "app".to_string()
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}
fn default_inbound_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15006))
}
fn default_outbound_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15001))
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_concurrent_streams() -> u32 {
    1024
}
/// Well past the kernel's first SYN retransmit (sent 1s after the SYN): a SYN an
/// endpoint dropped under a burst is retried before the call gives up.
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_pool_max_idle() -> usize {
    256
}
fn default_http2_connections() -> usize {
    4
}
fn default_http2_streams() -> usize {
    100
}
fn default_max_connecting() -> usize {
    16
}
fn default_max_pending() -> usize {
    4096
}
fn default_pending_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_log_level() -> String {
    "info".to_string()
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            header_read_timeout: default_header_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_concurrent_streams: default_max_concurrent_streams(),
        }
    }
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            pool_idle_timeout: default_pool_idle_timeout(),
            pool_max_idle_per_endpoint: default_pool_max_idle(),
            http2_connections_per_endpoint: default_http2_connections(),
            http2_streams_per_connection: default_http2_streams(),
            max_connecting_per_endpoint: default_max_connecting(),
            max_pending_per_endpoint: default_max_pending(),
            pending_timeout: default_pending_timeout(),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}
