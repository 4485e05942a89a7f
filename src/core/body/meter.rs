//! Body bytes as they stream: a request body as remora reads it from the caller, a
//! response body as remora hands it to the caller's connection.
//!
//! A [`BodyMeter`] adds each data frame's length to a count of its own and adds the total
//! to its counter once, when the body ends (or is dropped unfinished): one atomic add
//! per body, none per frame. A request body also shows its running count to the access
//! log line through [`RunningBytes`] (one relaxed store per frame), since the line may be
//! written while a request still streams. [`MeteredBody`] is the body remora's client
//! connections answer with: the response, with a meter beside it, inline (no
//! allocation). Trailers and framing (chunk sizes, HTTP/2 frame headers) are not body
//! bytes; a gRPC message's 5-byte prefix is.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;

use super::{BoxError, ProxyBody};

/// Where the access log reads a request body's running byte count.
pub trait RunningBytes: Send + Sync {
    /// `bytes` of the body were read so far.
    fn show(&self, bytes: u64);
}

/// A body's data bytes, counted as frames pass and added to `counter` once, at the end.
#[derive(Default)]
pub struct BodyMeter {
    bytes: u64,
    /// Taken when the count is added to it: the body ended (or was dropped).
    counter: Option<Counter>,
    /// Shown every count, when someone reads it before the end.
    running: Option<Arc<dyn RunningBytes>>,
}

impl std::fmt::Debug for BodyMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyMeter")
            .field("bytes", &self.bytes)
            .field("counted", &self.counter.is_none())
            .finish_non_exhaustive()
    }
}

impl BodyMeter {
    /// A meter adding to `counter` (when given) at the end, showing its count to
    /// `running` (when given) as it goes.
    pub fn new(counter: Option<Counter>, running: Option<Arc<dyn RunningBytes>>) -> Self {
        Self {
            bytes: 0,
            counter,
            running,
        }
    }

    /// Data bytes counted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Counts what a poll of the body returned; `ended` says whether the body is at its
    /// end after it.
    pub fn observe<E>(&mut self, polled: &Poll<Option<Result<Frame<Bytes>, E>>>, ended: bool) {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                    if let Some(running) = &self.running {
                        running.show(self.bytes);
                    }
                }
                if ended {
                    self.settle();
                }
            }
            Poll::Ready(Some(Err(_)) | None) => self.settle(),
            Poll::Pending => {}
        }
    }

    /// Adds the count to the counter, once.
    fn settle(&mut self) {
        if let Some(counter) = self.counter.take() {
            if self.bytes > 0 {
                counter.inc_by(self.bytes);
            }
        }
    }
}

impl Drop for BodyMeter {
    fn drop(&mut self) {
        self.settle();
    }
}

pin_project! {
    /// A response body with its bytes counted on the way to the caller.
    #[derive(Default)]
    pub struct MeteredBody {
        #[pin]
        inner: ProxyBody,
        meter: BodyMeter,
    }
}

impl std::fmt::Debug for MeteredBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredBody")
            .field("meter", &self.meter)
            .finish_non_exhaustive()
    }
}

impl MeteredBody {
    /// `inner`, its bytes added to `counter` (when given) at its end.
    pub fn new(inner: ProxyBody, counter: Option<Counter>) -> Self {
        Self {
            inner,
            meter: BodyMeter::new(counter, None),
        }
    }

    /// `inner`, counted nowhere.
    pub fn unmetered(inner: ProxyBody) -> Self {
        Self::new(inner, None)
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = this.inner.is_end_stream();
        this.meter.observe(&polled, ended);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Shown(AtomicU64);

    impl RunningBytes for Shown {
        fn show(&self, bytes: u64) {
            self.0.store(bytes, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_body_adds_its_data_bytes_once_at_its_end() {
        let counter = Counter::default();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = MeteredBody::new(
            ProxyBody::with_trailers("twelve bytes", trailers),
            Some(counter.clone()),
        );
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.to_bytes().len(), 12);
        assert_eq!(counter.get(), 12, "trailers are not body bytes");
    }

    #[test]
    fn a_body_dropped_unfinished_adds_what_passed_and_shows_it_running() {
        let counter = Counter::default();
        let shown = Arc::new(Shown::default());
        let mut meter = BodyMeter::new(Some(counter.clone()), Some(shown.clone()));
        let frame: Poll<Option<Result<_, BoxError>>> =
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"abc")))));
        meter.observe(&frame, false);
        meter.observe(&frame, false);
        assert_eq!(shown.0.load(Ordering::Relaxed), 6);
        assert_eq!(counter.get(), 0, "nothing is added before the end");
        drop(meter);
        assert_eq!(counter.get(), 6);
    }
}
