//! One upstream connection: a request's exchange on it, and the answer's body, which
//! reads the rest from the socket and gives the connection back at its clean end.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use super::chunked::Chunked;
use super::framed::Remaining;
use super::head::{encode_request, parse_response, Framing, ParsedHead};
use super::writer::BodyWriter;
use crate::core::stream::UpstreamStream;

/// Any error a body can fail with.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where an HTTP/1 connection goes back once an exchange on it completed (an endpoint's
/// pool of idle keep-alive connections). Handing the pool over as an
/// `Arc<dyn ConnectionHome>` is a coercion of the pool's own `Arc`: no allocation per
/// call.
pub trait ConnectionHome: Send + Sync + std::fmt::Debug {
    /// Takes `connection` back for the next request.
    fn checkin(self: Arc<Self>, connection: Connection);
}

/// Bytes a read asks for, at least.
const READ_SIZE: usize = 8 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    /// The socket failed.
    #[error("connection: {0}")]
    Io(#[source] io::Error),
    /// The upstream closed the connection before it answered.
    #[error("connection closed before an answer")]
    ClosedBeforeHead,
    /// The upstream closed the connection within the answer's head.
    #[error("connection closed within the answer's head")]
    IncompleteHead,
    /// The answer's head is not HTTP.
    #[error("malformed answer head: {0}")]
    Parse(httparse::Error),
    /// The answer's head (or its trailers) is larger than remora reads.
    #[error("answer head larger than {} bytes", super::MAX_HEAD_BYTES)]
    HeadTooLarge,
    /// The status is not one HTTP has.
    #[error("answer status {0} is not valid")]
    BadStatus(u16),
    /// A header name or value is not valid.
    #[error("invalid header in the answer")]
    BadHeader,
    /// `Content-Length` is not a number, or two of them disagree.
    #[error("invalid or conflicting content-length in the answer")]
    BadContentLength,
    /// A chunked body broke its framing.
    #[error("chunked answer body: {0}")]
    Chunked(&'static str),
    /// The upstream closed the connection before the body's end.
    #[error("connection closed before the answer's body ended")]
    IncompleteBody,
    /// The caller closed its connection before its request's body ended.
    #[error("connection closed before the request's body ended")]
    IncompleteRequest,
    /// A `101` to a request that asked for no upgrade.
    #[error("upstream switched protocols unasked")]
    UnaskedUpgrade,
    /// The request's framing headers cannot be sent as they are.
    #[error("request framing: transfer-encoding not ending in chunked, or a bad content-length")]
    RequestFraming,
    /// A body going out (a request's, an answer's) is longer or shorter than its
    /// `Content-Length`.
    #[error("body does not match its content-length")]
    BodyLength,
    /// The caller's request body failed; the request was cut, never completed.
    #[error("request body: {0}")]
    RequestBody(#[source] BoxError),
}

/// Why [`Connection::send`] did not bring an answer.
pub enum SendFailure<B> {
    /// Nothing of the request reached the connection (it was closed): the request can
    /// go out on another one.
    Unsent(Box<Request<B>>),
    /// The exchange failed after the request (or part of it) went out.
    Failed(Http1Error),
}

impl<B> std::fmt::Debug for SendFailure<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsent(request) => write!(f, "Unsent({} {})", request.method(), request.uri()),
            Self::Failed(error) => write!(f, "Failed({error})"),
        }
    }
}

/// Counts a connection among its pool's open ones for as long as it lives.
#[derive(Debug)]
struct OpenCount(Arc<AtomicUsize>);

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An HTTP/1.1 connection to an upstream, between exchanges.
#[derive(Debug)]
pub struct Connection {
    io: UpstreamStream,
    /// Bytes read and not yet taken; empty between exchanges. A request's head is
    /// written into it first and split off, and the answer is read into the rest: one
    /// allocation serves both, and is taken back whole once what was split off of it is
    /// dropped, so a connection in use allocates none per request.
    read: BytesMut,
    _open: OpenCount,
}

impl Connection {
    /// A connection over `io`, counted in `open` while it lives.
    pub fn new(io: UpstreamStream, open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self {
            io,
            read: BytesMut::new(),
            _open: OpenCount(open.clone()),
        }
    }

    /// Whether an idle connection can take a request: the upstream has neither closed
    /// it nor sent anything unasked. Costs no system call unless the socket was seen
    /// readable since its last read.
    pub fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 16];
        let mut buf = ReadBuf::new(&mut probe);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }

    /// Gives back the buffer of an idle connection (its next exchange takes a new
    /// one).
    pub fn release_buffer(&mut self) {
        if self.read.is_empty() {
            self.read = BytesMut::new();
        }
    }

    /// Sends `request` and waits for the answer's head; the answer's body reads the
    /// rest, and gives the connection to `home` at its clean end.
    pub async fn send<B>(
        mut self,
        request: Request<B>,
        home: Arc<dyn ConnectionHome>,
    ) -> Result<Response<ResponseBody<B>>, SendFailure<B>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let head_request = parts.method == Method::HEAD;
        // Empty between exchanges (a connection with bytes left over never comes back).
        self.read.clear();
        let framing = match encode_request(&mut parts, &body, &mut self.read) {
            Ok(framing) => framing,
            Err(error) => return Err(SendFailure::Failed(error)),
        };
        let mut writer = BodyWriter::new(self.read.split().freeze(), body, framing);
        let mut writing = true;
        let mut write_error = None;
        let answered = poll_fn(|cx| {
            if writing {
                match writer.poll_write(&mut self.io, cx) {
                    Poll::Ready(Ok(())) => writing = false,
                    Poll::Ready(Err(error)) => {
                        writing = false;
                        let unsent = writer.nothing_written() && writer.body_untouched();
                        if unsent || !matches!(error, Http1Error::Io(_)) {
                            return Poll::Ready(Err(error));
                        }
                        // The upstream may have answered and closed early: read on.
                        write_error = Some(error);
                    }
                    Poll::Pending => {}
                }
            }
            self.poll_head(cx, head_request)
        })
        .await;
        let ParsedHead {
            response,
            framing,
            keep_alive,
        } = match answered {
            Ok(parsed) => parsed,
            Err(error) => {
                if writer.nothing_written() {
                    if let Some(body) = writer.into_untouched_body() {
                        let request = Request::from_parts(parts, body);
                        return Err(SendFailure::Unsent(Box::new(request)));
                    }
                }
                return Err(SendFailure::Failed(write_error.unwrap_or(error)));
            }
        };
        let writer = writing.then(|| Box::new(writer));
        let reusable = keep_alive && write_error.is_none();
        let body = ResponseBody::new(self, framing, writer, reusable, home);
        Ok(response.map(|()| body))
    }

    /// Reads until the answer's head is whole.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<ParsedHead, Http1Error>> {
        loop {
            if !self.read.is_empty() {
                if let Some(parsed) = parse_response(&mut self.read, head_request)? {
                    return Poll::Ready(Ok(parsed));
                }
            }
            match ready!(self.poll_read(cx)) {
                Ok(0) if self.read.is_empty() => {
                    return Poll::Ready(Err(Http1Error::ClosedBeforeHead))
                }
                Ok(0) => return Poll::Ready(Err(Http1Error::IncompleteHead)),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Err(Http1Error::Io(error))),
            }
        }
    }

    /// Reads what the socket has into the read buffer: the count, 0 at its end.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
            self.read.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// An upstream's answer body on a connection of remora's own: read from the socket as
/// it is polled. At its clean end the connection goes back to its pool, when the
/// upstream keeps it open and the request was written whole; dropped before, the
/// connection closes (the rest of an answer cannot be skipped).
pub struct ResponseBody<B> {
    /// `None` once the body has ended (the connection went home or closed).
    conn: Option<Connection>,
    remaining: Remaining,
    /// The request's body, when the answer came before it was all written (an echo,
    /// an early answer): written on as this body is read.
    writer: Option<Box<BodyWriter<B>>>,
    reusable: bool,
    home: Option<Arc<dyn ConnectionHome>>,
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("conn", &self.conn)
            .field("remaining", &self.remaining)
            .field("writer", &self.writer)
            .field("reusable", &self.reusable)
            .finish()
    }
}

impl<B> ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn new(
        conn: Connection,
        framing: Framing,
        writer: Option<Box<BodyWriter<B>>>,
        reusable: bool,
        home: Arc<dyn ConnectionHome>,
    ) -> Self {
        let remaining = match framing {
            Framing::Empty | Framing::Length(0) => Remaining::Done,
            Framing::Length(length) => Remaining::Length(length),
            Framing::Chunked => Remaining::Chunked(Chunked::Size),
            Framing::UntilClose => Remaining::UntilClose,
        };
        let mut body = Self {
            conn: Some(conn),
            remaining,
            writer,
            reusable: reusable && framing != Framing::UntilClose,
            home: Some(home),
        };
        // A bodiless answer may never be polled: the connection goes home now.
        if matches!(body.remaining, Remaining::Done) {
            body.finish();
        }
        body
    }

    /// The body has ended cleanly: the connection goes home if it can carry another
    /// request, else it closes.
    fn finish(&mut self) {
        self.remaining = Remaining::Done;
        let conn = self.conn.take();
        let home = self.home.take();
        if !self.reusable || self.writer.take().is_some() {
            return;
        }
        if let (Some(conn), Some(home)) = (conn, home) {
            // Bytes past the answer's end: the upstream said more than it was asked.
            if conn.read.is_empty() {
                home.checkin(conn);
            }
        }
    }

    /// The body failed: the connection closes.
    fn fail(&mut self, error: Http1Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.remaining = Remaining::Failed;
        self.conn = None;
        self.writer = None;
        Poll::Ready(Some(Err(error.into())))
    }

    /// What the bytes read so far give: a frame, the end, or `None` (read more).
    fn take(&mut self) -> Result<Option<Option<Frame<Bytes>>>, Http1Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Some(None));
        };
        let taken = self.remaining.take(&mut conn.read)?;
        if self.remaining.is_done() {
            self.finish();
        }
        Ok(taken)
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let (Some(writer), Some(conn)) = (this.writer.as_mut(), this.conn.as_mut()) {
            match writer.poll_write(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => this.writer = None,
                Poll::Ready(Err(_)) => {
                    // The answer may still come whole; the connection will not serve
                    // another request.
                    this.writer = None;
                    this.reusable = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            match this.take() {
                Ok(Some(frame)) => return Poll::Ready(frame.map(Ok)),
                Ok(None) => {}
                Err(error) => return this.fail(error),
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_read(cx)) {
                Ok(0) if matches!(this.remaining, Remaining::UntilClose) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Http1Error::IncompleteBody),
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
