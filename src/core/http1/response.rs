//! The head of an answer to a caller, and how its body goes out.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap};
use http::{response, StatusCode, Version};
use http_body::Body;

use super::head::BodyFraming;

/// What the request said that shapes its answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Asked {
    /// A `HEAD` request: the answer has no body.
    pub(super) head_request: bool,
    pub(super) version: Version,
    /// The connection may carry another request (the caller's wish, and the server's).
    pub(super) keep_alive: bool,
    /// The caller takes trailers on a chunked answer (`TE: trailers`).
    pub(super) takes_trailers: bool,
}

/// How an answer goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) framing: BodyFraming,
    /// The connection carries another request after this answer.
    pub(super) keep_alive: bool,
}

/// What an answer's headers say about its framing, gathered in one pass.
#[derive(Debug, Default)]
struct Seen {
    /// `Some(None)`: a `Content-Length` that is not one number.
    length: Option<Option<u64>>,
    close: bool,
    date: bool,
}

impl Seen {
    fn of(headers: &HeaderMap) -> Self {
        let mut seen = Self::default();
        for (name, value) in headers {
            if name == header::CONTENT_LENGTH {
                let parsed = value
                    .to_str()
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok());
                seen.length = Some(match seen.length {
                    Some(earlier) if earlier != parsed => None,
                    _ => parsed,
                });
            } else if name == header::CONNECTION {
                seen.close |= value
                    .as_bytes()
                    .split(|&byte| byte == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
            } else if name == header::DATE {
                seen.date = true;
            }
        }
        seen
    }
}

/// Writes the head of `parts` into `out`, its framing headers made to say how `body`
/// goes out, and says so.
///
/// The body is delimited by its `Content-Length` when it has one, else by the length
/// it knows it has, else in chunks (HTTP/1.1) or by closing the connection (HTTP/1.0).
/// `HEAD`, `1xx`, `204` and `304` answers have none. `Connection` is remora's to say
/// (hop by hop), but on a `101`, whose `Connection: upgrade` goes to the caller.
pub(super) fn encode_response(
    parts: &response::Parts,
    body: &impl Body,
    asked: Asked,
    out: &mut BytesMut,
) -> Plan {
    let status = parts.status;
    let seen = Seen::of(&parts.headers);
    let mut keep_alive = asked.keep_alive && !seen.close;
    let no_body_status = status.is_informational() || status == StatusCode::NO_CONTENT;
    // The length header as it came is kept when it is one number and the body may
    // follow it (a HEAD or 304 answer's length is the resource's).
    let mut keep_length = !no_body_status && matches!(seen.length, Some(Some(_)));
    let mut added_length = None;
    let mut chunked = false;
    let framing = if no_body_status || asked.head_request || status == StatusCode::NOT_MODIFIED {
        BodyFraming::Empty
    } else if let Some(Some(length)) = seen.length {
        BodyFraming::Length(length)
    } else if let Some(length) = body.size_hint().exact() {
        keep_length = false;
        added_length = Some(length);
        if length == 0 {
            BodyFraming::Empty
        } else {
            BodyFraming::Length(length)
        }
    } else if asked.version == Version::HTTP_11 {
        keep_length = false;
        chunked = true;
        BodyFraming::Chunked {
            trailers: asked.takes_trailers,
        }
    } else {
        keep_length = false;
        keep_alive = false;
        BodyFraming::UntilClose
    };
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;

    out.reserve(128 + parts.headers.len() * 32);
    status_line(status, out);
    for (name, value) in &parts.headers {
        let skip = name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && !keep_length)
            || (name == header::CONNECTION && !upgrade);
        if skip {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if let Some(length) = added_length {
        out.put_slice(b"content-length: ");
        out.put_slice(itoa(length, &mut [0u8; 20]));
        out.put_slice(b"\r\n");
    }
    if chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    if !upgrade {
        if !keep_alive {
            out.put_slice(b"connection: close\r\n");
        } else if asked.version == Version::HTTP_10 {
            out.put_slice(b"connection: keep-alive\r\n");
        }
    }
    if !seen.date {
        put_date(out);
    }
    out.put_slice(b"\r\n");
    Plan {
        framing,
        keep_alive: keep_alive && !upgrade,
    }
}

/// `HTTP/1.1 <code> <reason>` and CRLF.
fn status_line(status: StatusCode, out: &mut BytesMut) {
    if status == StatusCode::OK {
        out.put_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
}

/// `value` in decimal, written at the end of `digits`.
fn itoa(mut value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &digits[start..];
        }
    }
}

thread_local! {
    /// The `Date` of the current second, formatted once per second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// A `date` header for now: RFC 9110 asks a proxy to add one to an answer that came
/// without it, and an origin (remora's own answers) to send one.
fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == date.1.len() {
                date.1.copy_from_slice(text.as_bytes());
                date.0 = second;
            }
        }
        if date.0 == second {
            out.put_slice(b"date: ");
            out.put_slice(&date.1);
            out.put_slice(b"\r\n");
        }
    });
}
