//! OpenTelemetry's semantic conventions for HTTP and gRPC spans, and span events.

use std::borrow::Cow;

use http::header::HeaderValue;
use http::{Method, Request, Version};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};

use crate::core::labels::Direction;

use super::*;

/// The span attribute (and event attribute) naming the caller's SPIFFE ID.
pub const PEER_IDENTITY: &str = "remora.peer.identity";

/// Records a decision (retry, breaker, fallback, ...) as an event on the current span.
/// Build `attributes` only when [`recording`] says the span keeps them.
pub fn event(name: impl Into<Cow<'static, str>>, attributes: Vec<KeyValue>) {
    Context::map_current(|cx| cx.span().add_event(name, attributes));
}

/// Whether the current span records (is sampled); when not, events are discarded.
pub fn recording() -> bool {
    Context::map_current(|cx| cx.span().is_recording())
}

/// The span status for an answer: 5xx is an error; gRPC codes per the semantic
/// conventions (every non-OK code for clients; server-fault codes for servers).
pub(super) fn error_status(
    status: u16,
    grpc_status: Option<u32>,
    direction: Direction,
    reason: Option<Cow<'_, str>>,
) -> Option<Status> {
    let describe = |what: String| match &reason {
        Some(reason) => Status::error(format!("{what} ({reason})")),
        None => Status::error(what),
    };
    if status >= 500 {
        return Some(describe(format!("HTTP {status}")));
    }
    let code = grpc_status?;
    let server_fault = matches!(code, 2 | 4 | 12 | 13 | 14 | 15);
    let failed = match direction {
        Direction::Outbound => code != 0,
        Direction::Inbound => server_fault,
    };
    failed.then(|| describe(format!("gRPC status {code}")))
}

/// Records the attributes of a request (call) span known when it starts.
pub(super) fn call_attributes<B>(
    attributes: &mut span::Attributes,
    request: &Request<B>,
    direction: Direction,
    grpc: Option<(&str, &str)>,
) {
    attributes.str("http.request.method", request.method().as_str());
    attributes.str("url.path", request.uri().path());
    attributes.str(
        "network.protocol.version",
        protocol_version(request.version()),
    );
    attributes.str("remora.direction", direction.as_str());
    if let Some((host, port)) = destination(request) {
        attributes.str("server.address", host);
        if let Some(port) = port {
            attributes.int("server.port", i64::from(port));
        }
    }
    if let Some((service, method)) = grpc {
        attributes.str("rpc.system", "grpc");
        attributes.str("rpc.service", service);
        attributes.str("rpc.method", method);
    }
}

/// The host and port the caller addressed (`:authority` or `Host`), borrowed.
fn destination<B>(request: &Request<B>) -> Option<(&str, Option<u16>)> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    let authority = authority.rsplit('@').next()?;
    // An IPv6 literal keeps its brackets, as `http::uri::Authority::host` does.
    let (host, port) = match authority.find(']') {
        Some(end) if authority.starts_with('[') => {
            let (host, rest) = authority.split_at(end + 1);
            (host, rest.strip_prefix(':'))
        }
        _ => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port.and_then(|p| p.parse().ok())))
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A span name that needs no allocation (the semantic conventions' `{method}`).
pub(super) fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "HTTP",
    }
}

pub(super) fn header_text(value: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}
