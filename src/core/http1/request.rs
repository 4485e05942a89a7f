//! A caller's request as it comes in: its head, parsed strictly, and its body, read
//! from the caller's connection as the request's handler polls it.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};

use super::chunked::Chunked;
use super::conn::{BoxError, Http1Error};
use super::framed::Remaining;
use super::head::MAX_HEADERS;
use super::io::Reader;

/// Room for the headers remora adds to a request on its way (request id, forwarding,
/// trace context, attempt, grpc-timeout): the map does not grow on the way.
const ADDED_HEADERS: usize = 8;

/// Why a request's head is refused; each is answered with its status and the
/// connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not an HTTP/1 request head, or framing that cannot be trusted: 400.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The head is larger than the limit, or has too many fields: 431.
    #[error("request head too large")]
    TooLarge,
}

impl HeadError {
    /// The status line of the answer that refuses such a head.
    pub(super) fn status_line(self) -> &'static [u8] {
        match self {
            Self::Malformed(_) => b"HTTP/1.1 400 Bad Request\r\n",
            Self::TooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        }
    }
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunks, then trailers.
    Chunked,
}

/// A request's head, and what its headers say about the connection.
#[derive(Debug)]
pub(super) struct RequestHead {
    pub(super) request: Request<()>,
    pub(super) framing: RequestFraming,
    /// The connection may carry another request after this one (HTTP/1.1 without
    /// `Connection: close`, HTTP/1.0 with `Connection: keep-alive`).
    pub(super) keep_alive: bool,
    /// `Expect: 100-continue`: the caller waits for a `100 Continue` before its body.
    pub(super) expects_continue: bool,
    /// `TE: trailers`: the caller takes trailers on a chunked answer.
    pub(super) takes_trailers: bool,
    /// An `Upgrade` header on an HTTP/1.1 request.
    pub(super) upgrade: bool,
}

/// What a request's framing headers say, gathered as its headers are read.
#[derive(Debug, Default)]
struct Seen {
    length: Option<u64>,
    bad_length: bool,
    /// `Some(last coding is chunked)` when a `Transfer-Encoding` came.
    chunked: Option<bool>,
    close: bool,
    keep_alive: bool,
    expects_continue: bool,
    takes_trailers: bool,
    upgrade: bool,
}

impl Seen {
    fn observe(&mut self, name: &HeaderName, value: &[u8]) {
        if name == header::CONTENT_LENGTH {
            // One number; a list, even of equal numbers, is refused (as nginx does).
            match parse_length(value) {
                Some(length) if self.length.is_none_or(|seen| seen == length) => {
                    self.length = Some(length);
                }
                _ => self.bad_length = true,
            }
        } else if name == header::TRANSFER_ENCODING {
            // Several fields make one list: its last coding is the last field's.
            self.chunked = Some(super::head::ends_in_chunked(value));
        } else if name == header::CONNECTION {
            for token in value.split(|&byte| byte == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == header::EXPECT {
            self.expects_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::TE {
            self.takes_trailers |= value
                .split(|&byte| byte == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        } else if name == header::UPGRADE {
            self.upgrade = true;
        }
    }
}

/// A `Content-Length` value: decimal digits that fit 64 bits, nothing else.
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |total, digit| total * 10 + u64::from(digit - b'0')),
    )
}

/// The request head at the start of `buf`, taken off it; `Ok(None)` while it is
/// incomplete. `max_head` bounds the head's bytes.
pub(super) fn parse_request(
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<Option<RequestHead>, HeadError> {
    // Parsed from a frozen view of what was read, so that the target and the header
    // values are slices of it (no copy); what follows the head goes back.
    let read = buf.split().freeze();
    let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        &read,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => {
            if read.len() > max_head {
                return Err(HeadError::TooLarge);
            }
            // Back into one buffer with room for the rest (a head split across reads
            // is rare: the copy is paid only then).
            let mut whole = BytesMut::with_capacity(read.len() + buf.capacity());
            whole.extend_from_slice(&read);
            *buf = whole;
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("not an HTTP/1 request head")),
    };
    if length > max_head {
        return Err(HeadError::TooLarge);
    }
    let method = parsed
        .method
        .and_then(|method| Method::from_bytes(method.as_bytes()).ok())
        .ok_or(HeadError::Malformed("bad method"))?;
    let target = parsed.path.unwrap_or("");
    let uri = Uri::from_maybe_shared(read.slice_ref(target.as_bytes()))
        .map_err(|_| HeadError::Malformed("bad request target"))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + ADDED_HEADERS);
    let mut seen = Seen::default();
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| HeadError::Malformed("bad header name"))?;
        seen.observe(&name, field.value);
        let value = HeaderValue::from_maybe_shared(read.slice_ref(field.value))
            .map_err(|_| HeadError::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    let framing = framing(&seen, version)?;
    let rest = &read[length..];
    if !rest.is_empty() {
        buf.extend_from_slice(rest);
    }
    let keep_alive = if version == Version::HTTP_10 {
        seen.keep_alive && !seen.close
    } else {
        !seen.close
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(RequestHead {
        request,
        framing,
        keep_alive,
        expects_continue: seen.expects_continue
            && version == Version::HTTP_11
            && framing != RequestFraming::Empty,
        takes_trailers: seen.takes_trailers,
        upgrade: seen.upgrade && version == Version::HTTP_11,
    }))
}

/// How the body of a request with `seen` headers is delimited (RFC 9112 6.3), strictly:
/// both framings at once, a coding that does not end in `chunked`, a coding on HTTP/1.0
/// and a bad or conflicting length are refused, since a front end that reads them
/// otherwise is how requests are smuggled.
fn framing(seen: &Seen, version: Version) -> Result<RequestFraming, HeadError> {
    if seen.bad_length {
        return Err(HeadError::Malformed("bad or conflicting content-length"));
    }
    match (seen.chunked, seen.length) {
        (Some(_), Some(_)) => Err(HeadError::Malformed(
            "both content-length and transfer-encoding",
        )),
        (Some(_), None) if version == Version::HTTP_10 => Err(HeadError::Malformed(
            "transfer-encoding on an HTTP/1.0 request",
        )),
        (Some(true), None) => Ok(RequestFraming::Chunked),
        (Some(false), None) => Err(HeadError::Malformed(
            "transfer-encoding not ending in chunked",
        )),
        (None, Some(0) | None) => Ok(RequestFraming::Empty),
        (None, Some(length)) => Ok(RequestFraming::Length(length)),
    }
}

/// Where a request body hands the connection's reading side back once it is done with
/// it, and how it asks for a `100 Continue`: one per connection, shared by its bodies.
#[derive(Debug, Default)]
pub(super) struct ReaderHome {
    returned: Mutex<Option<Returned>>,
    /// Where the exchange's `100 Continue` stands ([`NO_CONTINUE`], [`CONTINUE_EXPECTED`],
    /// [`CONTINUE_WANTED`]): kept here, not in the body, which every request carries.
    continue_state: AtomicU8,
}

/// No `100 Continue` to send.
const NO_CONTINUE: u8 = 0;
/// The caller waits for a `100 Continue` before its body; the body has not been read.
const CONTINUE_EXPECTED: u8 = 1;
/// The body's first read found nothing: the connection writes the `100 Continue`.
const CONTINUE_WANTED: u8 = 2;

/// The reading side, given back by a request body.
#[derive(Debug)]
pub(super) struct Returned {
    pub(super) reader: Reader,
    /// The body was read to its end: the next request's bytes follow.
    pub(super) clean: bool,
}

impl ReaderHome {
    fn slot(&self) -> MutexGuard<'_, Option<Returned>> {
        self.returned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The reading side, once the body gave it back.
    pub(super) fn take(&self) -> Option<Returned> {
        self.slot().take()
    }

    /// Says whether the next exchange's caller waits for `100 Continue`.
    pub(super) fn expect_continue(&self, expected: bool) {
        let state = if expected {
            CONTINUE_EXPECTED
        } else {
            NO_CONTINUE
        };
        self.continue_state.store(state, Ordering::Relaxed);
    }

    /// Whether the body asked for `100 Continue` since the last call.
    pub(super) fn take_continue(&self) -> bool {
        self.continue_state.load(Ordering::Relaxed) == CONTINUE_WANTED
            && self.continue_state.swap(NO_CONTINUE, Ordering::Relaxed) == CONTINUE_WANTED
    }

    /// A body's read found nothing buffered: a `100 Continue` the caller waits for is
    /// asked for (once).
    fn reading(&self) {
        if self.continue_state.load(Ordering::Relaxed) == CONTINUE_EXPECTED {
            self.continue_state
                .store(CONTINUE_WANTED, Ordering::Relaxed);
        }
    }
}

/// A caller's request body on a connection of remora's own, read from the socket as it
/// is polled. At its end, or when it is dropped, the connection's reading side goes
/// back to the connection.
#[derive(Debug)]
pub struct RequestBody {
    /// The connection's reading side while this body reads from it.
    reader: Option<Reader>,
    remaining: Remaining,
    /// Where the reading side goes back (`None`: a request without a body).
    home: Option<Arc<ReaderHome>>,
}

impl RequestBody {
    /// The body of a request that has none: the reading side stays with the connection.
    pub(super) fn empty() -> Self {
        Self {
            reader: None,
            remaining: Remaining::Done,
            home: None,
        }
    }

    /// A body read from `reader` as `framing` says, which gives `reader` back to
    /// `home` (and asks it for a `100 Continue` when its caller waits for one).
    pub(super) fn new(reader: Reader, framing: RequestFraming, home: Arc<ReaderHome>) -> Self {
        let remaining = match framing {
            RequestFraming::Empty | RequestFraming::Length(0) => Remaining::Done,
            RequestFraming::Length(length) => Remaining::Length(length),
            RequestFraming::Chunked => Remaining::Chunked(Chunked::Size),
        };
        Self {
            reader: Some(reader),
            remaining,
            home: Some(home),
        }
    }

    /// Gives the reading side back; `clean`: the body was read to its end.
    fn give_back(&mut self, clean: bool) {
        if let (Some(reader), Some(home)) = (self.reader.take(), self.home.as_ref()) {
            *home.slot() = Some(Returned { reader, clean });
        }
    }

    fn fail(&mut self, error: Http1Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.remaining = Remaining::Failed;
        self.give_back(false);
        Poll::Ready(Some(Err(error.into())))
    }

    /// What the bytes read so far give: a frame, the end, or `None` (read more).
    fn take(&mut self) -> Result<Option<Option<Frame<Bytes>>>, Http1Error> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(Some(None));
        };
        let taken = self.remaining.take(&mut reader.buf)?;
        if self.remaining.is_done() {
            self.give_back(true);
        }
        Ok(taken)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let clean = self.remaining.is_done();
        self.give_back(clean);
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.take() {
                Ok(Some(frame)) => return Poll::Ready(frame.map(Ok)),
                Ok(None) => {}
                Err(error) => return this.fail(error),
            }
            if let Some(home) = this.home.as_ref() {
                // The connection writes it once this poll returns to it.
                home.reading();
            }
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(reader.poll_read(cx)) {
                Ok(0) => return this.fail(Http1Error::IncompleteRequest),
                Ok(_) => {}
                Err(error) => return this.fail(Http1Error::Io(error)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining.size_hint()
    }
}
