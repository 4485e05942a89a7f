//! The request's head as it goes out, and the answer's head as it comes in.

use std::mem::MaybeUninit;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Response, StatusCode, Version};
use http_body::Body;

use super::conn::Http1Error;

/// Headers an answer's head may carry, at most (hyper's default).
pub const MAX_HEADERS: usize = 100;

/// Bytes an answer's head may take, at most (hyper's default read buffer limit).
pub const MAX_HEAD_BYTES: usize = 400 * 1024;

/// Room for the headers remora adds to an answer (the request id): the map does not
/// grow on the way back.
const ADDED_HEADERS: usize = 2;

/// How a message's body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFraming {
    /// No body: the body is not polled.
    Empty,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`; `trailers`: a trailers frame goes out (else it is
    /// dropped: a caller that did not say `TE: trailers`).
    Chunked { trailers: bool },
    /// Everything until the connection closes (an answer of unknown length to an
    /// HTTP/1.0 caller).
    UntilClose,
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (`HEAD`, `204`, `304`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunks, then trailers.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// An answer's head, with how its body is delimited and whether the connection can
/// carry another request after it.
#[derive(Debug)]
pub struct ParsedHead {
    /// Status, version and headers; the body comes apart.
    pub response: Response<()>,
    /// How the body is delimited.
    pub framing: Framing,
    /// The connection may carry another request once this answer is read.
    pub keep_alive: bool,
}

/// Writes the head of `parts` into `out`, fixing its framing headers for `body`, and
/// says how the body goes out.
///
/// The rules are hyper's, but for one: a `GET` whose body has an unknown length (a
/// caller's chunked body) is sent chunked, where hyper drops it.
pub(super) fn encode_request(
    parts: &mut request::Parts,
    body: &impl Body,
    out: &mut BytesMut,
) -> Result<BodyFraming, Http1Error> {
    let framing = request_framing(&mut parts.headers, body)?;
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    out.reserve(64 + target.len() + parts.headers.len() * 32);
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    Ok(framing)
}

/// The framing of a request with `body`; the headers are made to say it.
fn request_framing(headers: &mut HeaderMap, body: &impl Body) -> Result<BodyFraming, Http1Error> {
    if body.is_end_stream() {
        // A scan of the names, not a hashed removal: the header is almost never there.
        if headers.keys().any(|name| name == header::TRANSFER_ENCODING) {
            headers.remove(header::TRANSFER_ENCODING);
        }
        return Ok(BodyFraming::Empty);
    }
    if let Some(coding) = headers.get(header::TRANSFER_ENCODING) {
        if !ends_in_chunked(coding.as_bytes()) {
            return Err(Http1Error::RequestFraming);
        }
        headers.remove(header::CONTENT_LENGTH);
        return Ok(BodyFraming::Chunked { trailers: true });
    }
    match content_length(headers) {
        Ok(Some(length)) => return Ok(BodyFraming::Length(length)),
        Ok(None) => {}
        Err(_) => return Err(Http1Error::RequestFraming),
    }
    if let Some(length) = body.size_hint().exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        return Ok(BodyFraming::Length(length));
    }
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    Ok(BodyFraming::Chunked { trailers: true })
}

/// Whether a `Transfer-Encoding` value's last coding is `chunked`.
pub(super) fn ends_in_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&byte| byte == b',').next().unwrap_or(value);
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// The one length every `Content-Length` value (and list element) says; `Ok(None)`
/// without any; an error when one is not a number or two disagree.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Http1Error> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        add_length(value.as_bytes(), &mut length)?;
    }
    Ok(length)
}

/// Adds one `Content-Length` value (a number, or a list of them) to the length seen so
/// far; an error when it is not a number or says another length.
fn add_length(value: &[u8], length: &mut Option<u64>) -> Result<(), Http1Error> {
    for element in value.split(|&byte| byte == b',') {
        let digits = element.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Http1Error::BadContentLength);
        }
        let parsed = digits
            .iter()
            .fold(0u64, |total, digit| total * 10 + u64::from(digit - b'0'));
        match *length {
            Some(seen) if seen != parsed => return Err(Http1Error::BadContentLength),
            _ => *length = Some(parsed),
        }
    }
    Ok(())
}

/// What an answer's framing headers say, gathered as its headers are read (a lookup
/// per header afterwards would hash each name).
#[derive(Debug, Default)]
struct FramingHeaders {
    /// The `Content-Length`, when one came.
    length: Option<u64>,
    /// A `Content-Length` that was not a number, or disagreed with another.
    bad_length: bool,
    /// Whether the last `Transfer-Encoding` ends in `chunked`, when one came.
    coding: Option<bool>,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
}

impl FramingHeaders {
    fn observe(&mut self, name: &HeaderName, value: &[u8]) {
        if name == header::CONTENT_LENGTH {
            self.bad_length |= add_length(value, &mut self.length).is_err();
        } else if name == header::TRANSFER_ENCODING {
            self.coding = Some(ends_in_chunked(value));
        } else if name == header::CONNECTION {
            for token in value.split(|&byte| byte == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }

    /// How the body is delimited (RFC 9112 6.3), and whether the connection can carry
    /// another request after it.
    fn framing(
        &self,
        status: StatusCode,
        version: Version,
        head_request: bool,
    ) -> Result<(Framing, bool), Http1Error> {
        // HTTP/1.1 keeps the connection unless it says close; HTTP/1.0 only when it says
        // keep-alive.
        let keep_alive = if version == Version::HTTP_10 {
            self.keep_alive && !self.close
        } else {
            !self.close
        };
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok((Framing::Empty, keep_alive));
        }
        if let Some(chunked) = self.coding {
            // With a Content-Length as well, the message may be a smuggling attempt:
            // the coding wins (RFC 9112 6.3), and the connection is not used again.
            let alone = self.length.is_none() && !self.bad_length;
            return Ok(if chunked {
                (Framing::Chunked, keep_alive && alone)
            } else {
                (Framing::UntilClose, false)
            });
        }
        if self.bad_length {
            return Err(Http1Error::BadContentLength);
        }
        Ok(match self.length {
            Some(length) => (Framing::Length(length), keep_alive),
            None => (Framing::UntilClose, false),
        })
    }
}

/// The answer's head at the start of `buf`, taken off it; `Ok(None)` while it is
/// incomplete. Interim answers (`100 Continue`, `103 Early Hints`) are taken off and
/// skipped. `head_request`: the request was a `HEAD` (its answer has no body).
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ParsedHead>, Http1Error> {
    loop {
        let Some(parsed) = parse_one(buf, head_request)? else {
            return Ok(None);
        };
        let status = parsed.response.status();
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // Upgrades go through hyper; a 101 here answers a request that asked none.
            return Err(Http1Error::UnaskedUpgrade);
        }
        return Ok(Some(parsed));
    }
}

fn parse_one(buf: &mut BytesMut, head_request: bool) -> Result<Option<ParsedHead>, Http1Error> {
    // Parsed from a frozen view of what was read, so that header values are slices of
    // it (no copy, no allocation per header); what follows the head goes back.
    let read = buf.split().freeze();
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        &read,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => {
            if read.len() > MAX_HEAD_BYTES {
                return Err(Http1Error::HeadTooLarge);
            }
            let mut whole = BytesMut::with_capacity(read.len() + buf.capacity());
            whole.extend_from_slice(&read);
            *buf = whole;
            return Ok(None);
        }
        Err(error) => return Err(Http1Error::Parse(error)),
    };
    if length > MAX_HEAD_BYTES {
        return Err(Http1Error::HeadTooLarge);
    }
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Http1Error::BadStatus(code))?;
    let mut map = HeaderMap::with_capacity(parsed.headers.len() + ADDED_HEADERS);
    let mut seen = FramingHeaders::default();
    for header in parsed.headers.iter() {
        let name =
            HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| Http1Error::BadHeader)?;
        seen.observe(&name, header.value);
        let value = HeaderValue::from_maybe_shared(read.slice_ref(header.value))
            .map_err(|_| Http1Error::BadHeader)?;
        map.append(name, value);
    }
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    buf.extend_from_slice(&read[length..]);
    let (framing, keep_alive) = seen.framing(status, version, head_request)?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = map;
    Ok(Some(ParsedHead {
        response,
        framing,
        keep_alive,
    }))
}
