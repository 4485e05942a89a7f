//! The one error type of the request path and its mapping to what a caller sees.
//!
//! Every response remora makes itself (rather than relaying the upstream's) comes from
//! [`ProxyError::to_response`]: an HTTP status for plain HTTP callers, a trailers-only
//! gRPC status for gRPC callers, and always `x-remora-error: <reason>`.

use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body::ProxyBody;
use super::grpc::{grpc_code_for_http, percent_encode_grpc_message, GRPC_STATUS};

/// Header naming why remora answered instead of the upstream.
pub static ERROR_HEADER: HeaderName = HeaderName::from_static("x-remora-error");

/// Header marking a fallback answer, with the trigger that chose it.
pub static FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-remora-fallback");

/// A request no connection took, given back with the error that stopped it.
pub struct Unsent(pub Box<http::Request<ProxyBody>>);

impl std::fmt::Debug for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Unsent({} {})", self.0.method(), self.0.uri())
    }
}

/// Why a request did not get an upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No configured service matches the request's destination.
    #[error("no service is configured for destination {0:?}")]
    UnknownDestination(String),
    /// The service has no endpoint that can take the request.
    #[error("service {0}: no healthy endpoint")]
    NoHealthyEndpoint(String),
    /// The TCP connection to the endpoint failed.
    #[error("endpoint {endpoint}: connect failed: {}", chain(source.as_ref()))]
    Connect {
        /// The endpoint that refused.
        endpoint: String,
        /// What the connector said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// The request, given back whole: nothing of it was sent, so a retry can send it
        /// again as it is, whatever its method and body.
        unsent: Option<Unsent>,
    },
    /// The upstream broke the exchange after the connection was made.
    #[error("endpoint {endpoint}: {}", chain(source.as_ref()))]
    Upstream {
        /// The endpoint that failed.
        endpoint: String,
        /// What hyper said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request was malformed.
    #[error("malformed request: {0}")]
    BadRequest(String),
    /// The request did not complete in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A rate limit refused the call; the limiter says when a call would pass.
    #[error("rate limited: retry after {retry_after:?}")]
    RateLimited {
        /// The limiter's real wait time until the next call would be admitted.
        retry_after: Duration,
    },
    /// The service's concurrency cap is reached; the call is shed, not queued.
    #[error("service {0}: too many requests in flight")]
    Overloaded(String),
    /// The service's circuit breaker is open.
    #[error("service {0}: circuit breaker open")]
    BreakerOpen(String),
    /// A configured fault aborted the call.
    #[error("fault injected: status {0}")]
    FaultInjected(StatusCode),
    /// Inbound authorization refused the caller (its SPIFFE ID, or `unauthenticated`).
    #[error("caller {0} is not allowed to call this")]
    Forbidden(String),
}

impl ProxyError {
    /// A short machine-readable reason for `x-remora-error` and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownDestination(_) => "unknown-destination",
            Self::NoHealthyEndpoint(_) => "no-healthy-endpoint",
            Self::Connect { .. } => "connect-failure",
            Self::Upstream { .. } => "upstream-reset",
            Self::BadRequest(_) => "bad-request",
            Self::Timeout(_) => "timeout",
            Self::RateLimited { .. } => "rate-limited",
            Self::Overloaded(_) => "overloaded",
            Self::BreakerOpen(_) => "breaker-open",
            Self::FaultInjected(_) => "fault-injected",
            Self::Forbidden(_) => "forbidden",
        }
    }

    /// The HTTP status a plain HTTP caller gets.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::UnknownDestination(_) => StatusCode::NOT_FOUND,
            Self::NoHealthyEndpoint(_) | Self::Overloaded(_) | Self::BreakerOpen(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::FaultInjected(status) => *status,
            Self::Connect { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The gRPC status code a gRPC caller gets.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::UnknownDestination(_) => tonic::Code::Unimplemented,
            Self::NoHealthyEndpoint(_)
            | Self::Overloaded(_)
            | Self::BreakerOpen(_)
            | Self::Connect { .. }
            | Self::Upstream { .. } => tonic::Code::Unavailable,
            Self::RateLimited { .. } => tonic::Code::ResourceExhausted,
            Self::FaultInjected(status) => grpc_code_for_http(*status),
            Self::BadRequest(_) => tonic::Code::Internal,
            Self::Timeout(_) => tonic::Code::DeadlineExceeded,
            Self::Forbidden(_) => tonic::Code::PermissionDenied,
        }
    }

    /// The response remora sends in the upstream's place.
    pub fn to_response(&self, grpc: bool) -> Response<ProxyBody> {
        let reason = HeaderValue::from_static(self.reason());
        let message = self.to_string();
        if grpc {
            let mut response = Response::new(ProxyBody::empty());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert(
                GRPC_STATUS.clone(),
                HeaderValue::from(self.grpc_code() as i32),
            );
            if let Ok(value) = HeaderValue::from_str(&percent_encode_grpc_message(&message)) {
                headers.insert("grpc-message", value);
            }
            headers.insert(ERROR_HEADER.clone(), reason);
            return response;
        }
        let mut response = Response::new(ProxyBody::full(format!("{message}\n")));
        *response.status_mut() = self.http_status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(ERROR_HEADER.clone(), reason);
        if let Self::RateLimited { retry_after } = self {
            headers.insert(header::RETRY_AFTER, retry_after_seconds(*retry_after));
        }
        response
    }
}

/// `Retry-After` in whole seconds, rounded up so that a client waiting that long passes.
fn retry_after_seconds(wait: Duration) -> HeaderValue {
    let seconds = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    HeaderValue::from(seconds.max(1))
}

/// An error and its sources, `outer: inner: innermost`, skipping repeated messages.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let message = inner.to_string();
        if !out.ends_with(&message) {
            out.push_str(": ");
            out.push_str(&message);
        }
        source = inner.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_are_trailers_only_with_status() {
        let response = ProxyError::UnknownDestination("x".into()).to_response(true);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "12");
        assert_eq!(response.headers()[&ERROR_HEADER], "unknown-destination");
    }

    #[test]
    fn http_errors_carry_status_and_reason() {
        let response = ProxyError::Timeout(Duration::from_secs(1)).to_response(false);
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[&ERROR_HEADER], "timeout");
    }

    #[test]
    fn forbidden_is_403_or_permission_denied() {
        let error = ProxyError::Forbidden("spiffe://example.org/batch".into());
        let response = error.to_response(false);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[&ERROR_HEADER], "forbidden");
        let grpc = error.to_response(true);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "7");
    }

    #[test]
    fn rate_limited_says_when_to_retry_rounded_up() {
        let error = ProxyError::RateLimited {
            retry_after: Duration::from_millis(1200),
        };
        let response = error.to_response(false);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(error.to_response(true).headers()["grpc-status"], "8");
    }

    /// Found by the `timing_headers` fuzz target: rounding the longest wait up overflowed.
    #[test]
    fn the_longest_wait_saturates_instead_of_overflowing() {
        let error = ProxyError::RateLimited {
            retry_after: Duration::new(u64::MAX, 1),
        };
        let response = error.to_response(false);
        assert_eq!(
            response.headers()[header::RETRY_AFTER],
            u64::MAX.to_string()
        );
    }
}
