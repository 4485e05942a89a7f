//! The access log: one line per answered call, on its own `tracing` target so that a
//! log filter can route or silence it.

use std::net::SocketAddr;

/// The `tracing` target of access log lines.
pub const ACCESS_LOG_TARGET: &str = "remora::access";

/// One answered call, as its line says it.
pub struct Entry<'a> {
    /// The call's trace id (all zeros when unsampled and untraced).
    pub trace_id: &'a dyn std::fmt::Display,
    /// The request span's id.
    pub span_id: &'a dyn std::fmt::Display,
    /// The request's `x-request-id`.
    pub request_id: &'a str,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The service that took it (`unknown` when none did).
    pub service: &'a str,
    /// The request method.
    pub method: &'a http::Method,
    /// The request path.
    pub path: &'a str,
    /// The `Host` (or the authority of an absolute-form or HTTP/2 request).
    pub host: Option<&'a str>,
    /// The caller's address (the connection's peer).
    pub client: Option<SocketAddr>,
    /// Request body bytes read from the caller (by the time the answer ended).
    pub request_bytes: u64,
    /// Response body bytes sent back to the caller.
    pub response_bytes: u64,
    /// Tries made upstream (0 when remora answered without calling: no endpoint, an
    /// open breaker, a rate limit, a fixed route answer...).
    pub attempts: u32,
    /// The answering endpoint's time to the response head, for the try that answered.
    pub upstream_ms: Option<f64>,
    /// Why remora answered itself or failed the call (`x-remora-error`:
    /// `no-healthy-endpoint`, `breaker-open`, `rate-limited`, `timeout`, ...).
    pub reason: Option<&'a str>,
    /// The trigger of the fallback answer served, when one was.
    pub fallback: Option<&'a str>,
    /// The HTTP status sent back.
    pub status: u16,
    /// The gRPC status sent back, for gRPC calls.
    pub grpc_status: Option<u32>,
    /// From arrival to the end of the answer's body.
    pub duration_ms: f64,
    /// The endpoint that answered, if one did.
    pub upstream: Option<SocketAddr>,
    /// The caller's SPIFFE ID, when it came over mutual TLS (the field is left out of
    /// the line otherwise).
    pub peer_identity: Option<&'a str>,
}

/// Writes `entry`'s line.
pub fn log(entry: &Entry<'_>) {
    tracing::info!(
        target: ACCESS_LOG_TARGET,
        trace_id = %entry.trace_id,
        span_id = %entry.span_id,
        request_id = entry.request_id,
        direction = entry.direction,
        service = entry.service,
        method = %entry.method,
        host = entry.host,
        path = entry.path,
        client = entry.client.map(tracing::field::display),
        status = entry.status,
        grpc_status = entry.grpc_status,
        reason = entry.reason,
        fallback = entry.fallback,
        duration_ms = entry.duration_ms,
        upstream = entry.upstream.map(tracing::field::display),
        upstream_ms = entry.upstream_ms,
        attempts = entry.attempts,
        request_bytes = entry.request_bytes,
        response_bytes = entry.response_bytes,
        peer_identity = entry.peer_identity,
        "access"
    );
}
