//! A message going out (a request to an upstream, an answer to a caller): its head,
//! then its body framed by a length, in chunks or until the connection closes.
//!
//! What is ready goes out together: the head with the body's first frame (a request with
//! a small body is one `writev`), and every frame the body has ready with the next.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::Body;
use tokio::io::AsyncWrite;

use super::conn::BoxError;
use super::conn::Http1Error;
use super::head::BodyFraming;

/// Buffers waiting to go out, at most: a chunk takes three (size line, data, CRLF), so
/// the head and a first chunk fit. Kept small: the writer lives in every call's future.
const SLOTS: usize = 4;

/// The request being written.
pub(super) struct BodyWriter<B> {
    /// The body; `None` once it has ended (its end is queued).
    body: Option<B>,
    framing: BodyFraming,
    /// Bytes a `Content-Length` body may still send.
    remaining: u64,
    /// Buffers queued, in order, from `first`.
    queue: [Bytes; SLOTS],
    first: usize,
    len: usize,
    /// Bytes written so far (head included).
    written: u64,
}

impl<B> std::fmt::Debug for BodyWriter<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyWriter")
            .field("body_ended", &self.body.is_none())
            .field("framing", &self.framing)
            .field("queued", &self.len)
            .field("written", &self.written)
            .finish()
    }
}

impl<B> BodyWriter<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Writes `head`, then `body` as `framing` says.
    pub(super) fn new(head: Bytes, body: B, framing: BodyFraming) -> Self {
        let remaining = match framing {
            BodyFraming::Length(length) => length,
            BodyFraming::Empty | BodyFraming::Chunked { .. } | BodyFraming::UntilClose => 0,
        };
        let mut writer = Self {
            body: Some(body),
            framing,
            remaining,
            queue: Default::default(),
            first: 0,
            len: 0,
            written: 0,
        };
        writer.push(head);
        writer
    }

    /// Whether nothing has been written yet.
    pub(super) fn nothing_written(&self) -> bool {
        self.written == 0
    }

    /// Whether the body has not been read at all (it was empty): the request can still
    /// be sent elsewhere whole.
    pub(super) fn body_untouched(&self) -> bool {
        self.framing == BodyFraming::Empty
    }

    /// The body, when it was not read at all.
    pub(super) fn into_untouched_body(self) -> Option<B> {
        if self.body_untouched() {
            self.body
        } else {
            None
        }
    }

    /// Whether the body is read no further: it ended, or the framing sends none of it.
    fn read_all(&self) -> bool {
        self.body.is_none() || self.body_untouched()
    }

    fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.queue[(self.first + self.len) % SLOTS] = bytes;
            self.len += 1;
        }
    }

    fn room(&self) -> usize {
        SLOTS - self.len
    }

    /// Writes what it can; ready once the whole request (head, body, its end) is
    /// written and flushed.
    pub(super) fn poll_write<W>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Http1Error>>
    where
        W: AsyncWrite + Unpin,
    {
        loop {
            // Gather what the body has ready, as long as a chunk's three buffers fit.
            while self.room() >= 3 && !self.read_all() {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(frame) => self.take(frame)?,
                }
            }
            if self.len == 0 {
                if !self.read_all() {
                    return Poll::Pending;
                }
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(Http1Error::Io)?;
                return Poll::Ready(Ok(()));
            }
            let written = {
                let mut slices = [IoSlice::new(&[]); SLOTS];
                for (index, slice) in slices.iter_mut().take(self.len).enumerate() {
                    *slice = IoSlice::new(&self.queue[(self.first + index) % SLOTS]);
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..self.len]))
                    .map_err(Http1Error::Io)?
            };
            if written == 0 {
                return Poll::Ready(Err(Http1Error::Io(io::ErrorKind::WriteZero.into())));
            }
            self.written += written as u64;
            self.advance(written);
        }
    }

    fn advance(&mut self, mut written: usize) {
        while written > 0 && self.len > 0 {
            let front = &mut self.queue[self.first];
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            *front = Bytes::new();
            self.first = (self.first + 1) % SLOTS;
            self.len -= 1;
        }
    }

    /// Queues a frame of the body (or its end) as the framing says.
    fn take(
        &mut self,
        frame: Option<Result<http_body::Frame<Bytes>, B::Error>>,
    ) -> Result<(), Http1Error> {
        let frame = match frame {
            // The terminating chunk must never follow a body that failed: the upstream
            // would take a cut request for a whole one.
            Some(Err(error)) => return Err(Http1Error::RequestBody(error.into())),
            Some(Ok(frame)) => frame,
            None => return self.end(None),
        };
        let frame = match frame.into_data() {
            Ok(data) => return self.data(data),
            Err(frame) => frame,
        };
        match frame.into_trailers() {
            Ok(trailers) => self.end(Some(trailers)),
            Err(_) => Ok(()),
        }
    }

    fn data(&mut self, data: Bytes) -> Result<(), Http1Error> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            BodyFraming::Length(_) => {
                let length = data.len() as u64;
                if length > self.remaining {
                    return Err(Http1Error::BodyLength);
                }
                self.remaining -= length;
                self.push(data);
            }
            BodyFraming::UntilClose => self.push(data),
            BodyFraming::Chunked { .. } => {
                self.push(size_line(data.len()));
                self.push(data);
                self.push(Bytes::from_static(b"\r\n"));
            }
            BodyFraming::Empty => {}
        }
        Ok(())
    }

    /// The body ended (with `trailers`, when it has some).
    fn end(&mut self, trailers: Option<HeaderMap>) -> Result<(), Http1Error> {
        self.body = None;
        match self.framing {
            BodyFraming::Length(_) if self.remaining != 0 => Err(Http1Error::BodyLength),
            BodyFraming::Chunked { trailers: send } => {
                match trailers.filter(|_| send) {
                    Some(trailers) if !trailers.is_empty() => {
                        let mut end = BytesMut::with_capacity(64);
                        end.extend_from_slice(b"0\r\n");
                        for (name, value) in &trailers {
                            end.extend_from_slice(name.as_str().as_bytes());
                            end.extend_from_slice(b": ");
                            end.extend_from_slice(value.as_bytes());
                            end.extend_from_slice(b"\r\n");
                        }
                        end.extend_from_slice(b"\r\n");
                        self.push(end.freeze());
                    }
                    _ => self.push(Bytes::from_static(b"0\r\n\r\n")),
                }
                Ok(())
            }
            BodyFraming::Length(_) | BodyFraming::Empty | BodyFraming::UntilClose => Ok(()),
        }
    }
}

/// A chunk's size line: `size` in lower-case hex, without leading zeros, and CRLF.
fn size_line(size: usize) -> Bytes {
    let mut line = [0u8; 18];
    let mut start = 16;
    let mut rest = size;
    loop {
        start -= 1;
        line[start] = b"0123456789abcdef"[rest & 15];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    line[16..].copy_from_slice(b"\r\n");
    Bytes::copy_from_slice(&line[start..])
}
