//! A caller's connection in two halves: the reading side moves into a request's body
//! while the body is read (the handler polls it), and the writing side stays with the
//! connection, which writes the answer meanwhile.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The reading side of a caller's connection.
pub type CallerRead = Box<dyn AsyncRead + Send + Sync + Unpin>;

/// The writing side of a caller's connection.
pub type CallerWrite = Box<dyn AsyncWrite + Send + Sync + Unpin>;

/// A caller's connection that comes apart into its two sides.
pub trait SplitIo: Send + 'static {
    /// The reading and writing sides.
    fn split_io(self) -> (CallerRead, CallerWrite);
}

impl SplitIo for TcpStream {
    /// A TCP stream's own halves: no lock between them.
    fn split_io(self) -> (CallerRead, CallerWrite) {
        let (read, write) = self.into_split();
        (Box::new(read), Box::new(write))
    }
}

impl SplitIo for tokio_rustls::server::TlsStream<TcpStream> {
    /// A TLS stream's halves share its state behind a lock.
    fn split_io(self) -> (CallerRead, CallerWrite) {
        let (read, write) = tokio::io::split(self);
        (Box::new(read), Box::new(write))
    }
}

impl SplitIo for tokio::io::DuplexStream {
    /// An in-memory stream's halves (the fuzz targets' connections).
    fn split_io(self) -> (CallerRead, CallerWrite) {
        let (read, write) = tokio::io::split(self);
        (Box::new(read), Box::new(write))
    }
}

/// Bytes a read into an allocated buffer asks for, at least.
const READ_SIZE: usize = 8 * 1024;

/// Bytes a read at a message boundary takes on the stack, at most, before a buffer is
/// allocated for what came.
const STACK_READ: usize = 2 * 1024;

/// The smallest buffer allocated for bytes that came at a message boundary.
const MIN_BUFFER: usize = 1024;

/// The reading side of a caller's connection and the bytes read and not yet taken.
#[derive(Debug)]
pub(super) struct Reader {
    io: ReadSide,
    pub(super) buf: BytesMut,
    /// The last read filled the room it had: more is likely waiting (a long body), so
    /// the next read goes to a buffer of [`READ_SIZE`], not the stack.
    behind: bool,
}

/// The reading side, named for `Debug`.
struct ReadSide(CallerRead);

impl std::fmt::Debug for ReadSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallerRead")
    }
}

impl Reader {
    pub(super) fn new(io: CallerRead) -> Self {
        Self {
            io: ReadSide(io),
            buf: BytesMut::new(),
            behind: false,
        }
    }

    /// The reading side and what was read ahead of it.
    pub(super) fn into_parts(self) -> (CallerRead, BytesMut) {
        (self.io.0, self.buf)
    }

    /// Gives the buffer back when nothing is in it: a connection between requests
    /// holds no buffer while it waits.
    pub(super) fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() != 0 {
            self.buf = BytesMut::new();
        }
    }

    /// Reads what the socket has into the buffer: the count, 0 at its end.
    ///
    /// With nothing buffered and the caller caught up (a connection between requests,
    /// or one whose call runs), the read goes to the stack and what came is kept in the
    /// room the buffer has, or in a buffer just large enough: a connection whose caller
    /// has not sent yet allocates nothing, and one that has sent a small head allocates
    /// no more than it needs. A read that fills its room reads next into a large
    /// buffer, so a long body is still read in large reads.
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.is_empty() && !self.behind {
            let mut scratch = [MaybeUninit::<u8>::uninit(); STACK_READ];
            let mut read = ReadBuf::uninit(&mut scratch);
            ready!(Pin::new(&mut self.io.0).poll_read(cx, &mut read))?;
            let came = read.filled();
            if !came.is_empty() {
                if self.buf.capacity() < came.len() {
                    self.buf = BytesMut::with_capacity(came.len().max(MIN_BUFFER));
                }
                self.buf.extend_from_slice(came);
            }
            self.behind = came.len() == STACK_READ;
            return Poll::Ready(Ok(came.len()));
        }
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        let room = self.buf.capacity() - self.buf.len();
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io.0),
            cx,
            &mut self.buf
        ))?;
        self.behind = read == room;
        Poll::Ready(Ok(read))
    }
}
