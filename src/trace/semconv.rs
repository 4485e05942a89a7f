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
///
/// Scans bytes: an authority is a few dozen ASCII bytes, and `str`'s char searchers
/// cost about 350 instructions here for the three splits.
fn destination<B>(request: &Request<B>) -> Option<(&str, Option<u16>)> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    let bytes = authority.as_bytes();
    // Every split below is at an ASCII byte, so each piece is a `str` of its own.
    let authority = match bytes.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    let bytes = authority.as_bytes();
    // An IPv6 literal keeps its brackets, as `http::uri::Authority::host` does.
    let (host, port) = if bytes.first() == Some(&b'[') {
        match bytes.iter().position(|&b| b == b']') {
            Some(end) => {
                let (host, rest) = authority.split_at(end + 1);
                (host, rest.strip_prefix(':'))
            }
            None => split_port(authority),
        }
    } else {
        split_port(authority)
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port.and_then(|p| p.parse().ok())))
}

/// `host:port` split at its last colon.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.as_bytes().iter().rposition(|&b| b == b':') {
        Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
        None => (authority, None),
    }
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
    // Visible ASCII (request ids, remora's own reasons) is checked byte by byte, at a
    // fraction of `from_utf8_lossy`'s cost.
    match value.to_str() {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(value.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(uri: &str, host: Option<&str>) -> Option<(String, Option<u16>)> {
        let mut request = Request::builder().uri(uri);
        if let Some(host) = host {
            request = request.header(http::header::HOST, host);
        }
        let request = request.body(()).unwrap();
        destination(&request).map(|(host, port)| (host.to_owned(), port))
    }

    #[test]
    fn the_destination_is_read_from_the_authority_or_host() {
        let some = |host: &str, port| Some((host.to_owned(), port));
        assert_eq!(
            of("http://svc.local:8080/a", None),
            some("svc.local", Some(8080))
        );
        assert_eq!(of("http://user:pw@svc:81/", None), some("svc", Some(81)));
        assert_eq!(
            of("http://[2001:db8::1]:9000/", None),
            some("[2001:db8::1]", Some(9000))
        );
        assert_eq!(of("/path", Some("[::1]")), some("[::1]", None));
        assert_eq!(of("/path", Some("orders")), some("orders", None));
        assert_eq!(of("/path", Some("orders:x")), some("orders", None));
        assert_eq!(of("/path", Some(":80")), None);
        assert_eq!(of("/path", None), None);
    }
}
