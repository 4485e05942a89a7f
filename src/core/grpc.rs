//! gRPC on the wire, as every floor above reads and writes it: the content type, the
//! `grpc-status` of headers and trailers, the `/package.Service/Method` path, the
//! `grpc-timeout` header, the gRPC code of an HTTP status and `grpc-message` encoding.

use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use tokio::time::Instant;

use super::body::ProxyBody;
use super::call::CallInfo;

/// The `grpc-status` header (and trailer).
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The `grpc-timeout` header.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether `headers` say gRPC (an `application/grpc...` content type).
pub fn is_grpc_content(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(is_grpc_type)
}

/// Whether a `content-type` value is gRPC's (`application/grpc`, `+proto`, ...).
pub fn is_grpc_type(content_type: &HeaderValue) -> bool {
    content_type.as_bytes().starts_with(b"application/grpc")
}

/// Whether a call's caller speaks gRPC, as the proxy noted it in the call's
/// [`CallInfo`] (looked up once per call, not per layer).
pub fn speaks_grpc<B>(request: &Request<B>) -> bool {
    request
        .extensions()
        .get::<CallInfo>()
        .is_some_and(|call| call.grpc)
}

/// Whether the caller speaks gRPC (its errors must be gRPC statuses).
pub fn is_grpc<B>(request: &Request<B>) -> bool {
    is_grpc_content(request.headers())
}

/// `(service, method)` of a gRPC request (`/pkg.Service/Method`).
pub fn grpc_path<B>(request: &Request<B>) -> Option<(&str, &str)> {
    if !is_grpc_content(request.headers()) {
        return None;
    }
    request.uri().path().strip_prefix('/')?.split_once('/')
}

/// `grpc-status` of a trailers-only response (or of headers that carry it).
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    grpc_status_code(headers.get(&GRPC_STATUS)?)
}

/// A `grpc-status` value's code, when it is a number.
pub fn grpc_status_code(value: &HeaderValue) -> Option<u32> {
    std::str::from_utf8(value.as_bytes()).ok()?.parse().ok()
}

/// The gRPC code in a response's headers, when present and a number.
pub fn grpc_code<B>(response: &Response<B>) -> Option<tonic::Code> {
    let status = grpc_status(response.headers())?;
    Some(i32::try_from(status).map_or(tonic::Code::Unknown, tonic::Code::from_i32))
}

/// Where a response's gRPC status is, if it is a gRPC response at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcStatusAt {
    /// Not a gRPC response (its `content-type` is not `application/grpc...`).
    NotGrpc,
    /// In the headers (a trailers-only answer): the code, when it is a number.
    Headers(Option<u32>),
    /// Not in the headers: it comes in the trailers, if at all.
    Trailers,
}

/// Where the gRPC status of a response with `headers` is. A plain response costs one
/// lookup of a standard header.
pub fn grpc_status_at(headers: &HeaderMap) -> GrpcStatusAt {
    if !is_grpc_content(headers) {
        return GrpcStatusAt::NotGrpc;
    }
    match headers.get(&GRPC_STATUS) {
        Some(_) => GrpcStatusAt::Headers(grpc_status(headers)),
        None => GrpcStatusAt::Trailers,
    }
}

/// The gRPC code conventionally matching an HTTP status (the gRPC HTTP mapping).
pub fn grpc_code_for_http(status: StatusCode) -> tonic::Code {
    match status.as_u16() {
        400 => tonic::Code::Internal,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::Unimplemented,
        429 | 502 | 503 | 504 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    }
}

/// Percent-encodes a `grpc-message` value as the gRPC HTTP/2 spec requires.
pub fn percent_encode_grpc_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Rewrites `grpc-timeout` to the time left until the call's deadline.
///
/// Only gRPC calls ([`CallInfo::grpc`]: an `application/grpc` content type) with a
/// deadline (set by the timeout layer) are touched: the upstream then sees the caller's
/// deadline minus the time already spent here.
pub fn set_grpc_timeout(request: &mut Request<ProxyBody>) {
    let Some(&CallInfo {
        deadline: Some(deadline),
        grpc: true,
        ..
    }) = request.extensions().get::<CallInfo>()
    else {
        return;
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    request
        .headers_mut()
        .insert(&GRPC_TIMEOUT, encode_grpc_timeout(significant(remaining)));
}

/// `remaining`, rounded down to three significant digits: at most 1% sooner, never later.
///
/// The upstream then gives up no later than remora would, and calls sent within the same
/// stretch (0.1 s of a 30 s timeout, 1 ms of a 300 ms one) carry the same value, which
/// HTTP/2's header compression sends as a one-byte reference. Exact to the nanosecond,
/// every call's value would be new: encoded in full, added to the connection's HPACK
/// table, evicting headers worth keeping there. This runs for every attempt of a gRPC
/// call with a deadline.
fn significant(remaining: Duration) -> Duration {
    let Ok(nanos) = u64::try_from(remaining.as_nanos()) else {
        return remaining;
    };
    let digits = nanos.checked_ilog10().unwrap_or(0);
    let step = 10u64.pow(digits.saturating_sub(2));
    Duration::from_nanos(nanos - nanos % step)
}

/// Units of `grpc-timeout`, coarsest first, with their length in nanoseconds.
const UNITS: [(u8, u64); 6] = [
    (b'H', 3_600_000_000_000),
    (b'M', 60_000_000_000),
    (b'S', 1_000_000_000),
    (b'm', 1_000_000),
    (b'u', 1_000),
    (b'n', 1),
];

/// The units of whole seconds, for timeouts beyond `u64` nanoseconds (585 years).
const SECOND_UNITS: [(u8, u64); 3] = [(b'H', 3600), (b'M', 60), (b'S', 1)];

/// Largest value `grpc-timeout` carries: 8 digits.
const MAX_GRPC_TIMEOUT_VALUE: u64 = 99_999_999;

/// Parses a `grpc-timeout` value (`TimeoutValue TimeoutUnit`: 1 to 8 ASCII digits and one
/// of `H M S m u n`); anything else is `None`.
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let (&unit, digits) = value.as_bytes().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    let (_, nanos) = UNITS.iter().find(|(u, _)| *u == unit)?;
    let nanos = u128::from(value) * u128::from(*nanos);
    Some(Duration::new(
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    ))
}

/// Encodes `timeout` with the coarsest unit that represents it exactly in at most 8
/// digits; when none does, with the finest unit that fits, rounded down (the upstream
/// gives up no later than remora would).
pub fn encode_grpc_timeout(timeout: Duration) -> HeaderValue {
    let (value, unit) = match u64::try_from(timeout.as_nanos()) {
        Ok(nanos) => in_unit(nanos, &UNITS),
        Err(_) => in_unit(timeout.as_secs(), &SECOND_UNITS),
    };
    // At most 8 digits and the unit, written without the formatting machinery: this
    // runs for every attempt of a gRPC call with a deadline.
    let mut text = [0u8; 9];
    let mut at = text.len() - 1;
    text[at] = unit;
    let mut rest = value;
    loop {
        at -= 1;
        text[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&text[at..]).unwrap_or_else(|_| HeaderValue::from_static("0n"))
}

/// `amount` (in the smallest of `units`) as a value and unit: the coarsest unit that
/// holds it exactly in 8 digits, else the finest that holds it, rounded down.
fn in_unit(amount: u64, units: &[(u8, u64)]) -> (u64, u8) {
    let fits = |length: u64| amount / length <= MAX_GRPC_TIMEOUT_VALUE;
    let (unit, length) = units
        .iter()
        .find(|(_, length)| amount.is_multiple_of(*length) && fits(*length))
        .or_else(|| units.iter().rev().find(|(_, length)| fits(*length)))
        .copied()
        .unwrap_or(units[0]);
    ((amount / length).min(MAX_GRPC_TIMEOUT_VALUE), unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grpc_timeout_parsing_table() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("30S", Some(Duration::from_secs(30))),
            ("250m", Some(250 * MS)),
            ("1500u", Some(Duration::from_micros(1500))),
            ("7n", Some(Duration::from_nanos(7))),
            ("0m", Some(Duration::ZERO)),
            ("99999999S", Some(Duration::from_secs(99_999_999))),
            ("99999999H", Some(Duration::from_secs(99_999_999 * 3600))),
            ("00000010m", Some(10 * MS)),
            ("123456789S", None), // 9 digits
            ("", None),
            ("S", None),
            ("10", None),
            ("10s", None),
            ("10x", None),
            ("-5S", None),
            ("+5S", None),
            (" 5S", None),
            ("5 S", None),
            ("1.5S", None),
            ("5SS", None),
        ];
        for (text, expected) in cases {
            let value = HeaderValue::from_str(text).unwrap();
            assert_eq!(parse_grpc_timeout(&value), *expected, "{text:?}");
        }
    }

    #[test]
    fn grpc_timeout_encoding_is_coarsest_exact_unit() {
        let cases: &[(Duration, &str)] = &[
            (Duration::from_secs(7200), "2H"),
            (Duration::from_secs(90), "90S"),
            (Duration::from_secs(120), "2M"),
            (1500 * MS, "1500m"),
            (Duration::from_micros(1001), "1001u"),
            (Duration::from_nanos(1_234_567_891), "1234567u"),
            (Duration::from_nanos(5), "5n"),
            (Duration::ZERO, "0H"),
            (Duration::from_secs(99_999_999 * 3600 * 2), "99999999H"),
        ];
        for (duration, expected) in cases {
            assert_eq!(encode_grpc_timeout(*duration), *expected, "{duration:?}");
            let round = parse_grpc_timeout(&encode_grpc_timeout(*duration)).unwrap();
            assert!(round <= *duration);
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode_grpc_message("a%b\n"), "a%25b%0A");
    }

    #[test]
    fn passed_on_timeouts_keep_three_significant_digits_rounded_down() {
        let cases: &[(Duration, Duration)] = &[
            (Duration::from_nanos(29_987_654_321), 29_900 * MS),
            (Duration::from_nanos(299_700_001), 299 * MS),
            (
                Duration::from_nanos(4_987_654),
                Duration::from_micros(4_980),
            ),
            (Duration::from_nanos(999), Duration::from_nanos(999)),
            (Duration::from_nanos(7), Duration::from_nanos(7)),
            (Duration::ZERO, Duration::ZERO),
            (Duration::from_secs(3), Duration::from_secs(3)),
        ];
        for (remaining, passed_on) in cases {
            assert_eq!(significant(*remaining), *passed_on, "{remaining:?}");
            assert!(*passed_on <= *remaining);
            assert!(
                remaining.as_secs_f64() - passed_on.as_secs_f64()
                    <= remaining.as_secs_f64() / 100.0
            );
        }
    }

    /// A request stamped as the proxy stamps calls, its deadline set as the timeout
    /// layer sets it.
    fn call(grpc: bool, deadline: Instant) -> Request<ProxyBody> {
        let mut request = Request::new(ProxyBody::empty());
        if grpc {
            request
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        }
        let mut call = CallInfo::new("192.0.2.1:5000".parse().unwrap());
        call.grpc = is_grpc(&request);
        call.deadline = Some(deadline);
        request.extensions_mut().insert(call);
        request
    }

    fn set_deadline(request: &mut Request<ProxyBody>, deadline: Instant) {
        let call = request.extensions_mut().get_mut::<CallInfo>().unwrap();
        call.deadline = Some(deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn set_grpc_timeout_subtracts_elapsed_time() {
        let mut request = call(true, Instant::now() + Duration::from_secs(3));
        set_grpc_timeout(&mut request);
        assert_eq!(request.headers()[&GRPC_TIMEOUT], "3S");
        tokio::time::advance(1250 * MS).await;
        set_grpc_timeout(&mut request);
        assert_eq!(request.headers()[&GRPC_TIMEOUT], "1750m");
        tokio::time::advance(Duration::from_secs(5)).await;
        set_grpc_timeout(&mut request);
        assert_eq!(request.headers()[&GRPC_TIMEOUT], "0H");

        // Passed on to three significant digits, rounded down.
        tokio::time::advance(1250 * MS).await;
        set_deadline(
            &mut request,
            Instant::now() + Duration::from_nanos(29_987_654_321),
        );
        set_grpc_timeout(&mut request);
        assert_eq!(request.headers()[&GRPC_TIMEOUT], "29900m");

        // Plain HTTP calls get no grpc-timeout, even one that came with a grpc-timeout.
        let mut plain = call(false, Instant::now() + Duration::from_secs(3));
        set_grpc_timeout(&mut plain);
        assert!(plain.headers().get(&GRPC_TIMEOUT).is_none());
        plain
            .headers_mut()
            .insert(&GRPC_TIMEOUT, HeaderValue::from_static("9S"));
        set_grpc_timeout(&mut plain);
        assert_eq!(plain.headers()[&GRPC_TIMEOUT], "9S", "passed on untouched");
    }
}
