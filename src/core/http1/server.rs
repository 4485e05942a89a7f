//! A caller's HTTP/1.1 connection, served by remora itself: the connection's own task
//! reads a request's head, runs the request's handler (which reads the body from the
//! socket as it forwards it), and writes the answer, one exchange after another.
//!
//! hyper's server did the same behind a general dispatcher: a read and a write buffer
//! per connection, a body channel between the connection and the handler, and a state
//! machine that polls reading, writing and flushing on every turn. Here the reading
//! side moves into the request's body while the body is read ([`RequestBody`]) and
//! comes back at its end; the answer's head and its body's first frame go out in one
//! `writev`; a connection between requests holds no buffer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::conn::{BoxError, Http1Error};
use super::io::{CallerRead, CallerWrite, Reader, SplitIo};
use super::request::{
    parse_request, HeadError, ReaderHome, RequestBody, RequestFraming, RequestHead,
};
use super::response::{encode_response, Asked};
use super::writer::BodyWriter;
use crate::core::clock;

/// What bounds the reading of a request's head.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A request's head must arrive whole within this long of when the connection
    /// started waiting for it (between requests too: an idle keep-alive connection is
    /// closed after it).
    pub header_read_timeout: Duration,
    /// Bytes a request's head may take, at most (431 beyond).
    pub max_head_bytes: usize,
    /// A caller that closes its writing side still gets the answers to what it sent
    /// (the fuzz harness's clients do); otherwise its calls are dropped, as nobody
    /// waits for them.
    pub half_close: bool,
}

/// What answers the requests of a connection.
pub trait Handler: Unpin + Send + 'static {
    /// The body of an answer.
    type Body: Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send;
    /// An answer on its way.
    type Future: Future<Output = Response<Self::Body>> + Unpin + Send;

    /// Answers `request`.
    fn call(&mut self, request: Request<RequestBody>) -> Self::Future;
}

/// Why a connection ended other than by the caller closing it between requests.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A request's head was refused (and answered 400 or 431).
    #[error("{0}")]
    Head(HeadError),
    /// No whole request head came within the header read timeout.
    #[error("no request head within the header read timeout")]
    HeadTimeout,
    /// The caller closed the connection within a request's head.
    #[error("connection closed within a request head")]
    IncompleteHead,
    /// The caller closed its connection while its call ran: the call was dropped.
    #[error("the caller closed its connection while its call ran")]
    CallerLeft,
    /// Reading or writing failed, or an answer's body failed (the answer was cut).
    #[error("{0}")]
    Exchange(Http1Error),
}

/// `100 Continue`, sent when a handler first reads a body its caller holds back.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One request's exchange, from its head to its answer's end.
struct Exchange {
    asked: Asked,
    /// The reading side went into the request's body and is not back yet.
    body_out: bool,
    /// The caller asked for an upgrade: a `101` hands it the connection.
    upgrade: Option<oneshot::Sender<Upgraded>>,
}

/// Where a connection stands.
enum Phase<F, B> {
    /// Reading a request's head.
    Head,
    /// The handler runs.
    Calling {
        future: F,
        exchange: Exchange,
    },
    /// The answer goes out.
    Writing {
        writer: BodyWriter<B>,
        exchange: Exchange,
        keep_alive: bool,
        upgrade: bool,
    },
    /// A refused head's answer goes out, then the connection closes.
    Refusing {
        answer: Bytes,
        error: HeadError,
    },
    /// The writing side shuts down.
    Closing,
    Done,
}

/// A caller's HTTP/1.1 connection (a future that serves it to its end).
pub struct ServerConnection<H: Handler> {
    handler: H,
    limits: ServerLimits,
    /// The reading side, while no request body holds it.
    reader: Option<Reader>,
    write: CallerWrite,
    home: Arc<ReaderHome>,
    phase: Phase<H::Future, H::Body>,
    /// Asked to finish what is in flight and close.
    draining: bool,
    /// When the head being read first waited for bytes.
    waiting_since: Option<Instant>,
    /// The connection's one timer for the header read timeout, armed the first time a
    /// head waits and reset only when it fires early for a later head.
    timer: Option<Pin<Box<Sleep>>>,
    /// What is left to write of a `100 Continue`.
    interim: Bytes,
    /// The buffer answers' heads are written into: split off per answer, taken back
    /// whole once the answer is written.
    out: BytesMut,
}

impl<H: Handler> ServerConnection<H> {
    /// Serves `io` with `handler`.
    pub fn new<I: SplitIo>(io: I, handler: H, limits: ServerLimits) -> Self {
        let (read, write) = io.split_io();
        Self {
            handler,
            limits,
            reader: Some(Reader::new(read)),
            write,
            home: Arc::default(),
            phase: Phase::Head,
            draining: false,
            waiting_since: None,
            timer: None,
            interim: Bytes::new(),
            out: BytesMut::new(),
        }
    }

    /// Finishes the exchange in flight, then closes; closes at once between requests.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        self.get_mut().draining = true;
    }

    /// Reads until a request's head is whole; `Ok(None)`: the caller closed between
    /// requests.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<RequestHead>, ServeError>> {
        let Some(reader) = self.reader.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        loop {
            if !reader.buf.is_empty() {
                match parse_request(&mut reader.buf, self.limits.max_head_bytes) {
                    Ok(Some(head)) => return Poll::Ready(Ok(Some(head))),
                    Ok(None) => {}
                    Err(error) => return Poll::Ready(Err(ServeError::Head(error))),
                }
            }
            match reader.poll_read(cx) {
                Poll::Ready(Ok(0)) if reader.buf.is_empty() => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(ServeError::IncompleteHead)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Err(ServeError::Exchange(Http1Error::Io(error))))
                }
                Poll::Pending => {
                    let since = *self.waiting_since.get_or_insert_with(clock::now);
                    let deadline = since + self.limits.header_read_timeout;
                    let timer = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    // The timer may still be set for an earlier head: when it fires
                    // before this head's deadline, it is set again for it.
                    while timer.as_mut().poll(cx).is_ready() {
                        if timer.deadline() >= deadline {
                            return Poll::Ready(Err(ServeError::HeadTimeout));
                        }
                        timer.as_mut().reset(deadline);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Hands the request to the handler.
    fn start(&mut self, head: RequestHead) {
        let RequestHead {
            request,
            framing,
            keep_alive,
            expects_continue,
            takes_trailers,
            upgrade,
        } = head;
        let asked = Asked {
            head_request: request.method() == Method::HEAD,
            version: request.version(),
            keep_alive,
            takes_trailers,
        };
        let body_out = framing != RequestFraming::Empty;
        let body = match self.reader.take() {
            Some(reader) if body_out => {
                self.home.expect_continue(expects_continue);
                RequestBody::new(reader, framing, self.home.clone())
            }
            reader => {
                self.reader = reader;
                RequestBody::empty()
            }
        };
        let mut request = request.map(|()| body);
        let upgrade = upgrade.then(|| {
            let (sender, receiver) = oneshot::channel();
            request
                .extensions_mut()
                .insert(OnUpgrade(Arc::new(Mutex::new(Some(receiver)))));
            sender
        });
        let future = self.handler.call(request);
        self.waiting_since = None;
        self.phase = Phase::Calling {
            future,
            exchange: Exchange {
                asked,
                body_out,
                upgrade,
            },
        };
    }

    /// Takes the reading side back from the request's body, if it gave it back;
    /// `Some(clean)` then.
    fn reader_back(&mut self, exchange: &mut Exchange) -> Option<bool> {
        if !exchange.body_out {
            return None;
        }
        let returned = self.home.take()?;
        exchange.body_out = false;
        self.reader = Some(returned.reader);
        Some(returned.clean)
    }

    /// Whether the caller closed its connection while its call runs: looked at when the
    /// connection holds its reading side with nothing read ahead (as hyper's server
    /// did), which costs no system call unless the socket became readable. Bytes that
    /// came (a pipelined request) stay for the next head.
    fn caller_left(&mut self, cx: &mut Context<'_>) -> bool {
        if self.limits.half_close {
            return false;
        }
        match self.reader.as_mut() {
            Some(reader) if reader.buf.is_empty() => {
                matches!(reader.poll_read(cx), Poll::Ready(Ok(0) | Err(_)))
            }
            _ => false,
        }
    }

    /// Writes what is left of a `100 Continue`.
    fn poll_interim(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_write_all(&mut self.write, &mut self.interim, cx)
    }

    /// What follows a written answer: the next request, an upgrade, or the close.
    fn after(
        &mut self,
        mut exchange: Exchange,
        keep_alive: bool,
        upgrade: bool,
    ) -> Phase<H::Future, H::Body> {
        let clean = match self.reader_back(&mut exchange) {
            Some(clean) => clean,
            None => !exchange.body_out,
        };
        if upgrade {
            if let (Some(sender), Some(reader)) = (exchange.upgrade.take(), self.reader.take()) {
                let (read, buffered) = reader.into_parts();
                let write = std::mem::replace(&mut self.write, Box::new(tokio::io::sink()));
                let _ = sender.send(Upgraded {
                    read,
                    write,
                    buffered: buffered.freeze(),
                });
                return Phase::Done;
            }
            return Phase::Closing;
        }
        match self.reader.as_mut() {
            Some(reader) if keep_alive && clean && !self.draining => {
                reader.release_if_empty();
                Phase::Head
            }
            _ => Phase::Closing,
        }
    }
}

impl<H: Handler> Future for ServerConnection<H> {
    type Output = Result<(), ServeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Head => {
                    let idle = this
                        .reader
                        .as_ref()
                        .is_none_or(|reader| reader.buf.is_empty());
                    if this.draining && idle {
                        this.phase = Phase::Closing;
                        continue;
                    }
                    match ready!(this.poll_head(cx)) {
                        Ok(Some(head)) => this.start(head),
                        Ok(None) => {
                            this.phase = Phase::Done;
                            return Poll::Ready(Ok(()));
                        }
                        Err(ServeError::Head(error)) => {
                            let mut answer = BytesMut::with_capacity(96);
                            answer.extend_from_slice(error.status_line());
                            answer.extend_from_slice(
                                b"connection: close\r\ncontent-length: 0\r\n\r\n",
                            );
                            this.phase = Phase::Refusing {
                                answer: answer.freeze(),
                                error,
                            };
                        }
                        Err(error) => {
                            this.phase = Phase::Done;
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                Phase::Calling { future, .. } => {
                    let polled = Pin::new(future).poll(cx);
                    if this.home.take_continue() && this.interim.is_empty() {
                        this.interim = Bytes::from_static(CONTINUE);
                    }
                    if !this.interim.is_empty() {
                        if let Poll::Ready(Err(error)) = this.poll_interim(cx) {
                            this.phase = Phase::Done;
                            return Poll::Ready(Err(ServeError::Exchange(Http1Error::Io(error))));
                        }
                    }
                    let Poll::Ready(response) = polled else {
                        if this.caller_left(cx) {
                            // Nobody waits for the answer: the call is dropped (its
                            // upstream exchange cancelled) and the connection closes.
                            this.phase = Phase::Done;
                            return Poll::Ready(Err(ServeError::CallerLeft));
                        }
                        return Poll::Pending;
                    };
                    let Phase::Calling { mut exchange, .. } =
                        std::mem::replace(&mut this.phase, Phase::Done)
                    else {
                        unreachable!("matched above");
                    };
                    // A body dropped unread (an early answer): the connection closes
                    // after this answer, and the answer says so.
                    if this.reader_back(&mut exchange) == Some(false) {
                        exchange.asked.keep_alive = false;
                    }
                    exchange.asked.keep_alive &= !this.draining;
                    let (parts, body) = response.into_parts();
                    // A `100 Continue` not yet out goes before the answer.
                    let interim = std::mem::take(&mut this.interim);
                    this.out.extend_from_slice(&interim);
                    let plan = encode_response(&parts, &body, exchange.asked, &mut this.out);
                    let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
                    drop(parts);
                    let head = this.out.split().freeze();
                    this.phase = Phase::Writing {
                        writer: BodyWriter::new(head, body, plan.framing),
                        exchange,
                        keep_alive: plan.keep_alive,
                        upgrade,
                    };
                }
                Phase::Writing { writer, .. } => {
                    if let Err(error) = ready!(writer.poll_write(&mut this.write, cx)) {
                        // An answer cut short: the caller must not take it for whole.
                        this.phase = Phase::Done;
                        return Poll::Ready(Err(ServeError::Exchange(error)));
                    }
                    let Phase::Writing {
                        exchange,
                        keep_alive,
                        upgrade,
                        ..
                    } = std::mem::replace(&mut this.phase, Phase::Done)
                    else {
                        unreachable!("matched above");
                    };
                    this.phase = this.after(exchange, keep_alive, upgrade);
                    if matches!(this.phase, Phase::Done) {
                        return Poll::Ready(Ok(()));
                    }
                }
                Phase::Refusing { answer, error } => {
                    // A caller gone meanwhile misses its refusal; the connection closes
                    // either way.
                    let _ = ready!(poll_write_all(&mut this.write, answer, cx));
                    tracing::debug!(%error, "request head refused");
                    this.phase = Phase::Closing;
                }
                Phase::Closing => {
                    let _ = ready!(Pin::new(&mut this.write).poll_shutdown(cx));
                    this.phase = Phase::Done;
                    return Poll::Ready(Ok(()));
                }
                Phase::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Writes what is left of `bytes` (taking it off as it goes), then flushes.
fn poll_write_all(
    write: &mut CallerWrite,
    bytes: &mut Bytes,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !bytes.is_empty() {
        let written = ready!(Pin::new(&mut *write).poll_write(cx, bytes))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        bytes.advance(written);
    }
    Pin::new(write).poll_flush(cx)
}

/// A caller's connection after a `101`: the bytes it sent past its request's head
/// first, then the socket's.
pub struct Upgraded {
    read: CallerRead,
    write: CallerWrite,
    buffered: Bytes,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("buffered", &self.buffered.len())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buffered.is_empty() {
            let take = this.buffered.len().min(buf.remaining());
            buf.put_slice(&this.buffered.split_to(take));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_shutdown(cx)
    }
}

/// The upgrade a caller asked for, in its request's extensions: it resolves to the
/// caller's connection once a `101` answer to the request is written. Shared by the
/// request's copies (retries): the first to take it has it.
#[derive(Debug, Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    /// The caller's connection once the `101` is written; `None` when taken already.
    pub fn take(&self) -> Option<oneshot::Receiver<Upgraded>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}
