//! Bytes a client writes on one connection, served by the listeners' HTTP settings
//! (hyper, patched: third_party/hyper) and remora's proxy service: its framing checks
//! (Content-Length / Transfer-Encoding), absolute-form and Host routing. The first byte
//! picks the listener. Never panics nor hangs; a request whose head another parser
//! (httparse) reads as ambiguous framing, or as meant for another destination, is never
//! answered 2xx.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::fuzzing::{self, Listener};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    let listener = match pick % 3 {
        0 => Listener::Inbound,
        1 => Listener::Outbound,
        _ => Listener::Service,
    };
    let output = fuzzing::http_exchange(listener, input);
    let answered_2xx = output.starts_with(b"HTTP/1.1 2") || output.starts_with(b"HTTP/1.0 2");
    if !answered_2xx {
        return;
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = request.parse(input) else {
        return;
    };
    let named = |name: &str| {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.trim_ascii())
            .collect::<Vec<_>>()
    };
    let lengths = named("content-length");
    let codings = named("transfer-encoding");
    assert!(
        lengths.is_empty() || codings.is_empty(),
        "both framings answered 2xx: {:?}",
        String::from_utf8_lossy(input)
    );
    // Equal lengths written differently (`5`, `05`) are one length (RFC 9110, 8.6).
    let length = |value: &[u8]| std::str::from_utf8(value).ok()?.parse::<u64>().ok();
    assert!(
        lengths
            .windows(2)
            .all(|pair| length(pair[0]) == length(pair[1])),
        "conflicting lengths answered 2xx: {:?}",
        String::from_utf8_lossy(input)
    );
    // Only the `orders` service answers 2xx itself (its `/reply` route).
    let path = request.path.unwrap_or("");
    // Absolute-form only when the target starts with its scheme: an origin-form path
    // (`/a/b://c`) may hold `://` and still names no destination.
    let absolute = !path.starts_with('/') && path.contains("://");
    let destination = match path.split_once("://").filter(|_| absolute) {
        Some((_, rest)) => Some(rest.split(['/', '?']).next().unwrap_or("")),
        None => named("host")
            .first()
            .and_then(|h| std::str::from_utf8(h).ok()),
    };
    if let Some(destination) = destination {
        let host = destination.rsplit_once('@').map_or(destination, |(_, h)| h);
        let host = host.split(':').next().unwrap_or("");
        assert!(
            listener == Listener::Service && !absolute
                || host.eq_ignore_ascii_case("orders"),
            "{listener:?} answered 2xx for {destination:?}: {:?}",
            String::from_utf8_lossy(input)
        );
    }
});
