//! What happened to a call, as the policies that react to failure see it.
//!
//! Retry, the circuit breakers and outlier ejection all ask the same question of a
//! result ("was this a failure of kind X?"), so the classification lives here once.
//! A gRPC status is read from the response headers: trailers-only answers (how servers
//! and remora send immediate errors) carry it there; a status that arrives only in the
//! trailers of a streamed body is not seen by these policies.

use http::{Response, StatusCode};

use super::body::ProxyBody;
use super::error::ProxyError;
use super::grpc::grpc_code;

/// The kinds of failure a policy can be configured to react to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// The TCP connection to the endpoint failed.
    pub connect_failure: bool,
    /// The upstream reset or broke the exchange after connecting.
    pub reset: bool,
    /// The call (or one try) timed out.
    pub timeout: bool,
    /// 502, 503 or 504 from the upstream.
    pub gateway_error: bool,
    /// Any 5xx from the upstream.
    pub server_error: bool,
    /// These exact HTTP statuses.
    pub statuses: Vec<StatusCode>,
    /// These gRPC status codes (from `grpc-status` in the response headers).
    pub grpc_codes: Vec<tonic::Code>,
}

impl Conditions {
    /// Whether `result` is a failure these conditions name.
    pub fn matches(&self, result: &Result<Response<ProxyBody>, ProxyError>) -> bool {
        match result {
            Ok(response) => self.matches_response(response),
            Err(error) => self.matches_error(error),
        }
    }

    /// Whether an upstream's response is a failure these conditions name.
    pub fn matches_response<B>(&self, response: &Response<B>) -> bool {
        if self.matches_status(response.status()) {
            return true;
        }
        if self.grpc_codes.is_empty() {
            return false;
        }
        grpc_code(response).is_some_and(|code| self.grpc_codes.contains(&code))
    }

    /// Whether an HTTP status is a failure these conditions name.
    fn matches_status(&self, status: StatusCode) -> bool {
        (self.server_error && status.is_server_error())
            || (self.gateway_error && matches!(status.as_u16(), 502..=504))
            || self.statuses.contains(&status)
    }

    /// Whether an error remora met is a failure these conditions name.
    pub fn matches_error(&self, error: &ProxyError) -> bool {
        match error {
            ProxyError::Connect { .. } => self.connect_failure,
            ProxyError::Upstream { .. } => self.reset,
            ProxyError::Timeout(_) => self.timeout,
            // An injected abort rehearses an upstream answering with its status.
            ProxyError::FaultInjected(status) => self.matches_status(*status),
            // What remora decided itself (no endpoint, open breaker, rate limit...) is
            // not an upstream failure; policies that care match the error kind directly.
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, grpc: Option<&str>) -> Result<Response<ProxyBody>, ProxyError> {
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(code) = grpc {
            response
                .headers_mut()
                .insert("grpc-status", code.parse().unwrap());
        }
        Ok(response)
    }

    #[test]
    fn statuses_and_classes() {
        let gateway = Conditions {
            gateway_error: true,
            ..Default::default()
        };
        assert!(gateway.matches(&response(503, None)));
        assert!(!gateway.matches(&response(500, None)));
        let server = Conditions {
            server_error: true,
            statuses: vec![StatusCode::CONFLICT],
            ..Default::default()
        };
        assert!(server.matches(&response(500, None)));
        assert!(server.matches(&response(409, None)));
        assert!(!server.matches(&response(404, None)));
    }

    #[test]
    fn grpc_codes_from_headers() {
        let unavailable = Conditions {
            grpc_codes: vec![tonic::Code::Unavailable],
            ..Default::default()
        };
        assert!(unavailable.matches(&response(200, Some("14"))));
        assert!(!unavailable.matches(&response(200, Some("0"))));
        assert!(!unavailable.matches(&response(200, None)));
    }

    #[test]
    fn errors_by_kind() {
        let connect = Conditions {
            connect_failure: true,
            ..Default::default()
        };
        let refused = ProxyError::Connect {
            endpoint: "x".into(),
            source: "refused".into(),
            unsent: None,
        };
        assert!(connect.matches(&Err(refused)));
        assert!(!connect.matches(&Err(ProxyError::Timeout(Default::default()))));
        assert!(!connect.matches(&Err(ProxyError::BreakerOpen("s".into()))));
    }
}
