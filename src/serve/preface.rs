//! A connection that opens with HTTP/2's `PRI` but not its exact preface.
//!
//! A plaintext port takes HTTP/1.1 and h2c alike, told apart by the 24-byte client
//! preface. A connection that starts like the preface and then differs would otherwise
//! be served as HTTP/1.1 and answered `400`: an HTTP/2 client expects
//! `GOAWAY(PROTOCOL_ERROR)` (RFC 9113 section 3.4), and `PRI` is no HTTP/1.1 method.
//! The check peeks, so the bytes are still there for the server; an HTTP/1.1 request is
//! told apart by its first one or two bytes.
//!
//! Over TLS, a caller that negotiated ALPN `h2` has agreed on HTTP/2: whatever its first
//! 24 bytes are, the preface or they are refused the same way (an HTTP/1.1 request too).
//! A TLS stream cannot be peeked at, so those bytes are read, then handed back to the
//! server in front of the rest ([`Rewound`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `GOAWAY` on stream 0: last stream 0, error code 1 (PROTOCOL_ERROR).
const GOAWAY_PROTOCOL_ERROR: [u8; 17] = [
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // length 8, type GOAWAY, no flags, stream 0
    0, 0, 0, 0, // last stream id
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// What the first bytes of a plaintext connection say about HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opening {
    /// Not `PRI`: HTTP/1.1 (or garbage, which HTTP/1.1 refuses).
    NotPreface,
    /// The exact preface.
    Preface,
    /// `PRI`, then something else than the preface.
    BadPreface,
    /// A prefix of the preface: more bytes are needed.
    NeedMore,
}

/// Classifies the first bytes of a connection.
pub(crate) fn opening(first: &[u8]) -> Opening {
    let n = first.len().min(PREFACE.len());
    if first[..n] == PREFACE[..n] {
        return if n == PREFACE.len() {
            Opening::Preface
        } else {
            Opening::NeedMore
        };
    }
    // Where it differs: within `PRI` it is no preface at all.
    let same = first
        .iter()
        .zip(PREFACE)
        .take_while(|(a, b)| a == b)
        .count();
    if same < 3 {
        Opening::NotPreface
    } else {
        Opening::BadPreface
    }
}

/// Peeks at `tcp` until its opening is known; `Some`: serve it, `Some(true)` when it
/// opened with the HTTP/2 preface. On a bad HTTP/2 preface answers
/// `GOAWAY(PROTOCOL_ERROR)`; a peer that closes, or sends nothing by `deadline` (the
/// header read timeout, which the server would apply next), is done too: `None`.
pub(crate) async fn admit(tcp: &mut TcpStream, deadline: Instant) -> Option<bool> {
    let classify = |first: &[u8]| Some(opening(first)).filter(|o| *o != Opening::NeedMore);
    match peek_until::<_, { PREFACE.len() }>(tcp, deadline, classify).await {
        Some(Opening::BadPreface) => {
            let _ = tcp.write_all(&GOAWAY_PROTOCOL_ERROR).await;
            let _ = tcp.shutdown().await;
            None
        }
        Some(opened) => Some(opened == Opening::Preface),
        // Closed, or silent for the whole header read timeout (which the server would
        // apply next): done.
        None => None,
    }
}

/// Reads the first bytes of `io`, a connection whose ALPN said `h2`, until they are the
/// whole preface (`Some`: the connection with them put back) or differ from it
/// (`GOAWAY(PROTOCOL_ERROR)` sent, `None`). A peer that closes first, or is still short
/// of the preface at `deadline`, is done too: `None`.
pub(crate) async fn admit_h2<I>(mut io: I, deadline: Instant) -> Option<Rewound<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut first = [0u8; PREFACE.len()];
    let mut filled = 0;
    let read = async {
        while filled < first.len() {
            let n = io.read(&mut first[filled..]).await.ok()?;
            if n == 0 {
                return None;
            }
            filled += n;
            if first[..filled] != PREFACE[..filled] {
                return Some(false);
            }
        }
        Some(true)
    };
    match tokio::time::timeout_at(deadline, read)
        .await
        .ok()
        .flatten()?
    {
        true => Some(Rewound {
            first,
            consumed: 0,
            io,
        }),
        false => {
            let _ = io.write_all(&GOAWAY_PROTOCOL_ERROR).await;
            let _ = io.shutdown().await;
            None
        }
    }
}

/// A connection whose preface was read off it: reads give the preface again first.
pub(crate) struct Rewound<I> {
    first: [u8; PREFACE.len()],
    /// How much of `first` has been read again.
    consumed: usize,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewound<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.consumed < this.first.len() {
            let rest = &this.first[this.consumed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.consumed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewound<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Peeks at up to `N` first bytes of `tcp` until `classify` tells what they are
/// (`None`: it needs more); `None` when the peer closed or `deadline` passed first.
pub(crate) async fn peek_until<T, const N: usize>(
    tcp: &TcpStream,
    deadline: Instant,
    classify: impl Fn(&[u8]) -> Option<T>,
) -> Option<T> {
    let peek = async {
        let mut buf = [0u8; N];
        loop {
            let n = tcp.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            match classify(&buf[..n]) {
                Some(settled) => return Some(settled),
                // Peeking again at once would return the same bytes: wait for more.
                None => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout_at(deadline, peek).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_is_told_by_its_first_bytes_and_the_preface_by_all_of_them() {
        assert_eq!(opening(b"GET / HTTP/1.1\r\n"), Opening::NotPreface);
        assert_eq!(opening(b"POST"), Opening::NotPreface);
        assert_eq!(opening(b"PUT"), Opening::NotPreface);
        assert_eq!(opening(b"P"), Opening::NeedMore);
        assert_eq!(opening(b"PRI * HTTP/2.0\r\n"), Opening::NeedMore);
        assert_eq!(opening(PREFACE), Opening::Preface);
        assert_eq!(
            opening(b"PRI * HTTP/2.0\r\n\r\nXY\r\n\r\n"),
            Opening::BadPreface
        );
        assert_eq!(opening(b"PRIX"), Opening::BadPreface);
        assert_eq!(opening(b"\x16\x03\x01"), Opening::NotPreface);
    }

    #[tokio::test]
    async fn after_alpn_h2_the_preface_is_read_then_given_back_and_anything_else_refused() {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let (mut client, server) = tokio::io::duplex(256);
        client.write_all(PREFACE).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        let mut rewound = admit_h2(server, deadline).await.expect("the preface");
        let mut again = [0u8; 30];
        rewound.read_exact(&mut again).await.unwrap();
        assert_eq!(&again[..24], PREFACE);
        assert_eq!(&again[24..], b"frames");

        for first in [&b"GET / HTTP/1.1\r\n"[..], b"PRI * HTTP/2.0\r\n\r\nXY"] {
            let (mut client, server) = tokio::io::duplex(256);
            client.write_all(first).await.unwrap();
            assert!(admit_h2(server, deadline).await.is_none());
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, GOAWAY_PROTOCOL_ERROR);
        }
    }
}
