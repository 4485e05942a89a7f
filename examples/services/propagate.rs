//! Headers a service passes from the request it serves to the calls it makes: the trace
//! headers, so that the sidecars on both sides put their spans into one trace, and the
//! compose example's canary mark, which orders' sidecar routes on.

use http::HeaderMap;

/// W3C trace context, baggage, the request id and the canary mark, in that order.
pub const TRACE_HEADERS: [&str; 5] = [
    "traceparent",
    "tracestate",
    "baggage",
    "x-request-id",
    "x-canary",
];

/// Copies the trace headers present in `from` into `to`.
pub fn copy(from: &HeaderMap, to: &mut HeaderMap) {
    for name in TRACE_HEADERS {
        if let Some(value) = from.get(name) {
            to.insert(name, value.clone());
        }
    }
}

/// Copies the trace headers present in `from` into a gRPC call's metadata.
pub fn copy_to_metadata(from: &HeaderMap, to: &mut tonic::metadata::MetadataMap) {
    for name in TRACE_HEADERS {
        let Some(value) = from.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Ok(value) = value.parse() {
            to.insert(name, value);
        }
    }
}
