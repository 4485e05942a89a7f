//! An upstream's response body that frees what it holds of its connection when it ends.
//!
//! The pools live in `upstream`; what a response body holds of them lives here, a
//! [`StreamSlot`] (an HTTP/2 stream), so that the body type every layer names needs
//! nothing above the core floor. An HTTP/1 answer's body is
//! [`crate::core::http1::ResponseBody`], which gives its connection back itself.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::BoxError;

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

/// An upstream's HTTP/2 response body. When it ends (or is dropped) the stream's slot
/// on its connection is freed.
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    slot: Option<StreamSlot>,
}

impl PooledBody {
    /// `body`, holding `slot` until it ends.
    pub fn new(body: Incoming, slot: StreamSlot) -> Self {
        let mut this = Self {
            body,
            slot: Some(slot),
        };
        // Bodiless answers (204, 304, HEAD) may never be polled: release now.
        if this.body.is_end_stream() {
            this.release();
        }
        this
    }

    fn release(&mut self) {
        self.slot = None;
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
            Poll::Ready(None | Some(Err(_))) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
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
