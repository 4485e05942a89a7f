//! Header hygiene of a forwarded hop: hop-by-hop headers out, `x-forwarded-*` in, and
//! the one upgrade a client may ask for carried over explicitly.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// How many [`HOP_BY_HOP`] names.
const HOPS: usize = 6;

/// Headers that describe one connection and must not be forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, those the `Connection` header names among them.
/// `TE: trailers` survives (gRPC needs it); any other `TE` is dropped.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (a comparison each, no hashing) says which of them came:
    // most messages carry none, a gRPC call only `TE`, and a removal or a lookup per
    // name would hash each name again.
    const TE: u8 = 1 << HOPS;
    let mut present = 0u8;
    for name in headers.keys() {
        if name == header::TE {
            present |= TE;
        } else if let Some(at) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << at;
        }
    }
    if present == 0 {
        return;
    }
    // `HOP_BY_HOP[0]` is `Connection`.
    if present & 1 != 0 {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (at, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << at) != 0 {
            headers.remove(name);
        }
    }
    if present & TE != 0 {
        if let Some(te) = headers.get(header::TE) {
            if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
                headers.remove(header::TE);
            }
        }
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` + `Upgrade`).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    // `Upgrade` first: most requests have none, and then `Connection` is not read.
    let protocol = headers.get(header::UPGRADE)?;
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        .then(|| protocol.clone())
}

/// A client connection's address as an `x-forwarded-for` element, formatted once per
/// connection rather than once per request.
#[derive(Debug, Clone)]
pub struct ForwardedFor(HeaderValue);

impl ForwardedFor {
    /// The element for a client at `client`.
    pub fn new(client: IpAddr) -> Self {
        let text = bytes::Bytes::from(client.to_string());
        // An IP address's text is always a valid header value.
        Self(
            HeaderValue::from_maybe_shared(text)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        )
    }
}

/// Appends the caller's address to `x-forwarded-for` and sets `x-forwarded-proto`.
pub fn set_forwarded(headers: &mut HeaderMap, client: &ForwardedFor) {
    static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    let value = match headers.get(&XFF) {
        Some(previous) => {
            let mut joined = Vec::with_capacity(previous.len() + 2 + client.0.len());
            joined.extend_from_slice(previous.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client.0.as_bytes());
            HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).ok()
        }
        None => Some(client.0.clone()),
    };
    if let Some(value) = value {
        headers.insert(&XFF, value);
    }
    if !headers.contains_key(&XFP) {
        headers.insert(&XFP, HeaderValue::from_static("http"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "close, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "x-kept"]);
    }

    /// Each hop-by-hop header is removed when it comes alone, whatever else came.
    #[test]
    fn strips_each_hop_by_hop_header_alone() {
        for hop in &HOP_BY_HOP {
            let mut headers = HeaderMap::new();
            headers.insert("x-kept", "1".parse().unwrap());
            headers.insert(hop, "x".parse().unwrap());
            headers.insert(header::TE, "trailers".parse().unwrap());
            strip_hop_by_hop(&mut headers);
            let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["x-kept", "te"], "{hop}");
        }
    }

    #[test]
    fn drops_te_other_than_trailers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, "gzip".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn forwarded_for_appends() {
        let client = ForwardedFor::new("127.0.0.1".parse().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        set_forwarded(&mut headers, &client);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        let mut fresh = HeaderMap::new();
        set_forwarded(&mut fresh, &client);
        assert_eq!(fresh["x-forwarded-for"], "127.0.0.1");
    }

    #[test]
    fn forwarded_for_formats_ipv6() {
        let client = ForwardedFor::new("::1".parse().unwrap());
        let mut headers = HeaderMap::new();
        set_forwarded(&mut headers, &client);
        assert_eq!(headers["x-forwarded-for"], "::1");
    }

    #[test]
    fn detects_upgrade_requests() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert_eq!(requested_upgrade(&headers).unwrap(), "websocket");
        headers.remove(header::CONNECTION);
        assert!(requested_upgrade(&headers).is_none());
    }
}
