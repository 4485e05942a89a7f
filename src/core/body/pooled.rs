//! An upstream's response body that frees what it holds of its connection when it ends.
//!
//! The pools live in `upstream`; what a response body holds of them lives here, a
//! [`StreamSlot`] (an HTTP/2 stream), so that the body type every layer names needs
//! nothing above the core floor. An HTTP/1 answer's body is
//! [`crate::core::http1::ResponseBody`], which gives its connection back itself.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::RecvStream;
use http_body::{Body, Frame, SizeHint};

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

/// An upstream's HTTP/2 response body, read from its `h2` stream. Each chunk read gives
/// its bytes back to the stream's flow-control window; when the body ends (or is
/// dropped) the stream's slot on its connection is freed.
#[derive(Debug)]
pub struct PooledBody {
    recv: RecvStream,
    /// Bytes still to come, when the answer declared a `content-length`.
    remaining: Option<u64>,
    /// Whether the DATA frames have ended (the trailers, if any, come next).
    data_done: bool,
    slot: Option<StreamSlot>,
}

impl PooledBody {
    /// The body of an answer whose headers declared `content_length` (if any), holding
    /// `slot` until it ends.
    pub fn new(recv: RecvStream, content_length: Option<u64>, slot: StreamSlot) -> Self {
        let mut this = Self {
            recv,
            remaining: content_length,
            data_done: false,
            slot: Some(slot),
        };
        // Bodiless answers (204, 304, HEAD) may never be polled: release now.
        if this.recv.is_end_stream() {
            this.release();
        }
        this
    }

    fn release(&mut self) {
        self.slot = None;
    }

    /// The next frame: data while DATA frames come, then the trailers, if any.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window is given back as the data is handed on, not when the
                    // caller has written it: as hyper's client does.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut self.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(early_end(error)),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(error) => Poll::Ready(early_end(error)),
        }
    }
}

/// A stream error while reading: a reset with `NO_ERROR` ends the body cleanly (the
/// server answered before reading the whole request, RFC 9113 section 8.1); any other
/// fails it.
fn early_end(error: h2::Error) -> Option<Result<Frame<Bytes>, BoxError>> {
    match error.reason() {
        Some(h2::Reason::NO_ERROR) => None,
        _ => Some(Err(error.into())),
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = self.poll_next(cx);
        match &polled {
            Poll::Ready(None | Some(Err(_))) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.recv.is_end_stream() => self.release(),
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}
