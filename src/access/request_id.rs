//! The request id: the caller's `x-request-id`, or a random UUID when it sent none.

use http::header::{HeaderName, HeaderValue};

/// Marks `value` as one HTTP/2's header compression must not index: a value new with
/// every call (a request id, a `traceparent`).
///
/// NOTE: the `h2` crate's encoder puts every value it does not know into the
/// connection's dynamic table. A value that is never sent twice then only evicts
/// entries that could have been reused, and every later value of that header is compared
/// with each one still held before it is inserted in turn: with a request id on the
/// request and on the answer, that cost a unary gRPC call through remora about 4,700
/// instructions (`bench/RESULTS.md`, "Values HPACK must not index"). A value marked
/// this way is sent as a literal "never indexed" (RFC 7541, 6.2.3) and skips the table.
pub fn never_indexed(value: &mut HeaderValue) {
    value.set_sensitive(true);
}

/// The header carrying a request's id; generated when the caller sent none.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A random UUID (version 4 layout), written without allocating a `String`.
pub fn new_request_id() -> HeaderValue {
    let bits = fastrand::u128(..) & !(0xf000 << 64) & !(0xc << 60) | (0x4000 << 64) | (0x8 << 60);
    let bytes = bits.to_be_bytes();
    let mut out = *b"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
    crate::core::hex::write(&mut out[0..8], &bytes[0..4]);
    crate::core::hex::write(&mut out[9..13], &bytes[4..6]);
    crate::core::hex::write(&mut out[14..18], &bytes[6..8]);
    crate::core::hex::write(&mut out[19..23], &bytes[8..10]);
    crate::core::hex::write(&mut out[24..36], &bytes[10..16]);
    let mut value =
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    never_indexed(&mut value);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4_shaped_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let text = a.to_str().unwrap();
        assert_eq!(text.len(), 36);
        let groups: Vec<_> = text.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&text[14..15], "4");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
    }
}
