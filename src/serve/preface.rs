//! A connection that opens with HTTP/2's `PRI` but not its exact preface.
//!
//! A plaintext port takes HTTP/1.1 and h2c alike, told apart by the 24-byte client
//! preface. A connection that starts like the preface and then differs would otherwise
//! be served as HTTP/1.1 and answered `400`: an HTTP/2 client expects
//! `GOAWAY(PROTOCOL_ERROR)` (RFC 9113 section 3.4), and `PRI` is no HTTP/1.1 method.
//! The check peeks, so the bytes are still there for the server; an HTTP/1.1 request is
//! told apart by its first one or two bytes.

use tokio::io::AsyncWriteExt;
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

/// Peeks at `tcp` until its opening is known; `true`: serve it. On a bad HTTP/2
/// preface answers `GOAWAY(PROTOCOL_ERROR)`; a peer that closes, or sends nothing by
/// `deadline` (the header read timeout, which the server would apply next), is done too:
/// `false`.
pub(crate) async fn admit(tcp: &mut TcpStream, deadline: Instant) -> bool {
    let classify = |first: &[u8]| Some(opening(first)).filter(|o| *o != Opening::NeedMore);
    match peek_until::<_, { PREFACE.len() }>(tcp, deadline, classify).await {
        Some(Opening::BadPreface) => {
            let _ = tcp.write_all(&GOAWAY_PROTOCOL_ERROR).await;
            let _ = tcp.shutdown().await;
            false
        }
        Some(_) => true,
        // Closed, or silent for the whole header read timeout (which the server would
        // apply next): done.
        None => false,
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
}
