//! The request id: the caller's `x-request-id`, or a random UUID when it sent none.

use http::header::{HeaderName, HeaderValue};

/// The header carrying a request's id; generated when the caller sent none.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A random UUID (version 4 layout), written without allocating a `String`.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..) & !(0xf000 << 64) & !(0xc << 60) | (0x4000 << 64) | (0x8 << 60);
    let mut out = [0u8; 36];
    let mut nibble = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *slot = b'-';
            continue;
        }
        *slot = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
        nibble += 1;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
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
