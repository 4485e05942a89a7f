//! An upstream's response body that gives its connection back when it ends.
//!
//! The pools live in `upstream`; what a response body holds of them lives here, behind
//! [`ConnectionHome`], so that the body type every layer names needs nothing above the
//! core floor. Handing the pool over as an `Arc<dyn ConnectionHome>` is a coercion of
//! the pool's own `Arc`: no allocation per response.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use super::{BoxError, ProxyBody};

/// Where an HTTP/1 connection goes back once an exchange on it completed (an endpoint's
/// pool of idle keep-alive connections).
pub trait ConnectionHome: Send + Sync + std::fmt::Debug {
    /// Takes `sender` back for the next request.
    fn checkin(self: Arc<Self>, sender: SendRequest<ProxyBody>);
}

/// A stream in flight on an HTTP/2 connection; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    /// Takes one slot of `streams` (the connection's count of streams in flight).
    pub fn take(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Self(streams.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a response holds of its connection until its body ends.
#[derive(Debug)]
pub enum Lease {
    /// An HTTP/1 connection, returned to `home` if the body ended cleanly.
    Http1 {
        /// The connection.
        sender: SendRequest<ProxyBody>,
        /// Its endpoint's pool.
        home: Arc<dyn ConnectionHome>,
    },
    /// A stream slot on an HTTP/2 connection.
    Http2(StreamSlot),
}

impl Lease {
    /// The exchange is over; `complete` says whether the body was read to its end.
    pub fn release(self, complete: bool) {
        match self {
            Self::Http1 { sender, home } if complete => home.checkin(sender),
            // An unfinished HTTP/1 exchange cannot be resumed: the connection closes.
            Self::Http1 { .. } => {}
            Self::Http2(slot) => drop(slot),
        }
    }
}

/// An upstream's response body. When it ends (or is dropped after its last frame) the
/// HTTP/1 connection goes back to its pool, or the HTTP/2 stream slot is freed; dropped
/// earlier, the HTTP/1 connection is closed (its unread rest cannot be skipped).
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl PooledBody {
    /// `body`, holding `lease` until it ends.
    pub fn new(body: Incoming, lease: Lease) -> Self {
        let mut this = Self {
            body,
            lease: Some(lease),
        };
        // Bodiless answers (204, 304, HEAD) may never be polled: release now.
        if this.body.is_end_stream() {
            this.release(true);
        }
        this
    }

    fn release(&mut self, complete: bool) {
        if let Some(lease) = self.lease.take() {
            lease.release(complete);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(true),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(true),
            Poll::Ready(Some(Err(_))) => self.release(false),
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let complete = self.body.is_end_stream();
        self.release(complete);
    }
}
