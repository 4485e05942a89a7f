//! Moving one TCP passthrough connection's bytes both ways until it ends: both sides
//! close, either breaks, or both directions stay quiet for the idle timeout.
//!
//! The copy is tokio's bidirectional copy (an end of stream on one side shuts the other
//! side's write half down, and the other direction goes on: half-close works). Each side
//! is read through a [`Metered`] wrapper that counts the bytes into the service's
//! counters as they pass (a long-lived connection shows up in the metrics while it
//! lives, not only when it ends) and stamps the time of the last read, which the idle
//! watch compares against the timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::metrics::ByteCounters;

/// Bytes read at once from either side. NOTE: larger than tokio's default (8 KiB) for
/// bulk throughput, at 64 KiB per open connection.
const BUFFER: usize = 32 * 1024;

/// How a splice ended.
#[derive(Debug)]
pub enum SpliceEnd {
    /// Both sides closed (each end of stream passed on to the other side).
    Closed,
    /// Neither side sent anything for the idle timeout.
    Idle,
    /// Reading or writing either side failed (a reset, a broken pipe, a TLS error).
    Broken(io::Error),
}

/// What passed through one connection.
#[derive(Debug)]
pub struct Spliced {
    /// How it ended.
    pub end: SpliceEnd,
    /// Bytes from the client to the endpoint.
    pub received: u64,
    /// Bytes from the endpoint to the client.
    pub sent: u64,
}

/// Copies `client` to `upstream` and back until both close, either fails, or both are
/// quiet for `idle_timeout`; counts the bytes into `counters` as they pass.
pub async fn splice<C, U>(
    client: C,
    upstream: U,
    idle_timeout: Duration,
    counters: &ByteCounters,
) -> Spliced
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Metered::new(client, &counters.received, &activity);
    let mut upstream = Metered::new(upstream, &counters.sent, &activity);
    let end = {
        let copy =
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                copied = &mut copy => break match copied {
                    Ok(_) => SpliceEnd::Closed,
                    Err(error) => SpliceEnd::Broken(error),
                },
                () = tokio::time::sleep_until(activity.last() + idle_timeout) => {
                    // A read since the sleep began moved the deadline: sleep until it.
                    if activity.last() + idle_timeout <= Instant::now() {
                        break SpliceEnd::Idle;
                    }
                }
            }
        }
    };
    Spliced {
        end,
        received: client.bytes,
        sent: upstream.bytes,
    }
}

/// When either side was last read from.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Nanoseconds from `start` to the last read.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let since = self.start.elapsed().as_nanos();
        self.last
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// One side of a splice: what is read from it is counted and marks activity.
struct Metered<'a, S> {
    inner: S,
    counter: &'a Counter,
    activity: &'a Activity,
    /// Read from this side so far.
    bytes: u64,
}

impl<'a, S> Metered<'a, S> {
    fn new(inner: S, counter: &'a Counter, activity: &'a Activity) -> Self {
        Self {
            inner,
            counter,
            activity,
            bytes: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            let read = u64::try_from(read).unwrap_or(u64::MAX);
            self.counter.inc_by(read);
            self.bytes += read;
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    use super::*;

    const IDLE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn bytes_pass_both_ways_are_counted_and_a_close_ends_it() {
        let (client, mut app) = duplex(1024);
        let (upstream, mut server) = duplex(1024);
        let counters = ByteCounters::default();
        let relay = async {
            let spliced = splice(client, upstream, IDLE, &counters).await;
            assert!(matches!(spliced.end, SpliceEnd::Closed), "{spliced:?}");
            assert_eq!((spliced.received, spliced.sent), (4, 6));
        };
        let talk = async {
            app.write_all(b"PING").await.unwrap();
            let mut ping = [0; 4];
            server.read_exact(&mut ping).await.unwrap();
            assert_eq!(&ping, b"PING");
            server.write_all(b"+PONG\n").await.unwrap();
            let mut pong = [0; 6];
            app.read_exact(&mut pong).await.unwrap();
            assert_eq!(&pong, b"+PONG\n");
            // The client closes; the server sees the end, then closes too.
            app.shutdown().await.unwrap();
            assert_eq!(server.read(&mut [0; 1]).await.unwrap(), 0);
            drop(server);
            assert_eq!(app.read(&mut [0; 1]).await.unwrap(), 0);
        };
        tokio::join!(relay, talk);
        assert_eq!(counters.received.get(), 4);
        assert_eq!(counters.sent.get(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_both_ways_for_the_idle_timeout_ends_it_and_traffic_postpones_that() {
        let (client, mut app) = duplex(1024);
        let (upstream, mut server) = duplex(1024);
        let counters = ByteCounters::default();
        let started = Instant::now();
        let relay = async {
            let spliced = splice(client, upstream, IDLE, &counters).await;
            assert!(matches!(spliced.end, SpliceEnd::Idle), "{spliced:?}");
            // The last byte passed at 8s: the connection was idle from then on.
            assert_eq!(started.elapsed(), Duration::from_secs(8) + IDLE);
        };
        let talk = async {
            // One direction only, every 4s: the connection is not idle.
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                server.write_all(b"x").await.unwrap();
                app.read_exact(&mut [0; 1]).await.unwrap();
            }
            // The relay dropped both sides at the timeout: each sees the end.
            assert_eq!(app.read(&mut [0; 1]).await.unwrap(), 0);
            assert_eq!(server.read(&mut [0; 1]).await.unwrap(), 0);
        };
        tokio::join!(relay, talk);
    }
}
