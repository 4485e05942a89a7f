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

use super::{BodyEnd, BoxError, ProxyBody};

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

/// Someone waiting in a [`MeteredBody`] for the end of the body the caller gets: the
/// request's own trace (its span when a gRPC status comes in trailers, its access log
/// line). One box and no wrapper, where a [`StatusWaiter`](super::StatusWaiter) deeper in
/// the body takes a box and a wrapping body (two allocations). Boxed rather than inline:
/// a waiter is large, and every answer's body is moved a few times, waiter or not.
pub trait EndWaiter: Send + 'static {
    /// The body ended as `end` says, after `sent` data bytes passed; called exactly once.
    fn settle(self, end: BodyEnd<'_>, sent: u64);
}

/// No one waits.
#[derive(Debug)]
pub enum NoWaiter {}

impl EndWaiter for NoWaiter {
    fn settle(self, _end: BodyEnd<'_>, _sent: u64) {
        match self {}
    }
}

pin_project! {
    /// A response body with its bytes counted on the way to the caller, and the one
    /// party (`W`) waiting for its end.
    pub struct MeteredBody<W: EndWaiter = NoWaiter> {
        #[pin]
        inner: ProxyBody,
        // After `inner`: fields drop in order, so the waiters inside `inner` (the attempt,
        // added deeper) settle before this one, as they do at a normal end.
        end: Ending<W>,
    }
}

/// A body's meter and its waiter, which settles when the body is dropped unfinished.
struct Ending<W: EndWaiter> {
    meter: BodyMeter,
    waiter: Option<Box<W>>,
}

impl<W: EndWaiter> Ending<W> {
    /// Settles the waiter, once, when a poll that returned `polled` ended the body.
    fn observe(&mut self, polled: &Poll<Option<Result<Frame<Bytes>, BoxError>>>, ended: bool) {
        if let Some(end) = BodyEnd::of(polled, ended) {
            self.settle(end);
        }
    }

    fn settle(&mut self, end: BodyEnd<'_>) {
        if let Some(waiter) = self.waiter.take() {
            (*waiter).settle(end, self.meter.bytes());
        }
    }
}

impl<W: EndWaiter> Drop for Ending<W> {
    fn drop(&mut self) {
        self.settle(BodyEnd::Dropped);
    }
}

impl<W: EndWaiter> std::fmt::Debug for MeteredBody<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredBody")
            .field("meter", &self.end.meter)
            .field("waiting", &self.end.waiter.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for MeteredBody {
    fn default() -> Self {
        Self::unmetered(ProxyBody::default())
    }
}

impl MeteredBody {
    /// `inner`, its bytes added to `counter` (when given) at its end.
    pub fn new(inner: ProxyBody, counter: Option<Counter>) -> Self {
        Self::waited(inner, counter, None)
    }

    /// `inner`, counted nowhere.
    pub fn unmetered(inner: ProxyBody) -> Self {
        Self::new(inner, None)
    }
}

impl<W: EndWaiter> MeteredBody<W> {
    /// `inner`, its bytes added to `counter` (when given) at its end, which `waiter`
    /// (when given) waits for. A body already at its end settles the waiter at once (it
    /// has no trailers to wait for, and may never be polled).
    pub fn waited(inner: ProxyBody, counter: Option<Counter>, waiter: Option<Box<W>>) -> Self {
        let mut end = Ending {
            meter: BodyMeter::new(counter, None),
            waiter,
        };
        if inner.is_end_stream() {
            end.settle(BodyEnd::Ended(None));
        }
        Self { inner, end }
    }
}

impl<W: EndWaiter> Body for MeteredBody<W> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = this.inner.is_end_stream();
        this.end.meter.observe(&polled, ended);
        if this.end.waiter.is_some() {
            this.end.observe(&polled, ended);
        }
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

    /// What waiters saw, in order: name, how the body ended, its gRPC status, the bytes
    /// sent.
    type Seen = Arc<std::sync::Mutex<Vec<(&'static str, &'static str, Option<u32>, u64)>>>;

    /// Records its end in `seen`, under its name.
    #[derive(Debug)]
    struct Recorder(&'static str, Seen);

    impl Recorder {
        fn record(self, end: BodyEnd<'_>, sent: u64) {
            let (how, code) = match end {
                BodyEnd::Ended(code) => ("ended", code),
                BodyEnd::Failed(_) => ("failed", None),
                BodyEnd::Dropped => ("dropped", None),
            };
            self.1.lock().unwrap().push((self.0, how, code, sent));
        }
    }

    impl EndWaiter for Recorder {
        fn settle(self, end: BodyEnd<'_>, sent: u64) {
            self.record(end, sent);
        }
    }

    impl crate::core::body::StatusWaiter for Recorder {
        fn settle(self: Box<Self>, end: BodyEnd<'_>, sent: u64) {
            self.record(end, sent);
        }
    }

    /// One data frame, then nothing ever again.
    struct Stalled(Option<Bytes>);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn the_waiter_settles_at_the_trailers_with_their_status_and_the_bytes_sent() {
        let seen = Seen::default();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("5"));
        let inner = ProxyBody::with_trailers("twelve bytes", trailers);
        let waiter = Box::new(Recorder("end", seen.clone()));
        let body = MeteredBody::waited(inner, None, Some(waiter));
        assert!(seen.lock().unwrap().is_empty(), "it waits for the end");
        body.collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [("end", "ended", Some(5), 12)]);
    }

    #[tokio::test]
    async fn the_waiter_settles_at_the_last_data_frame_of_a_body_without_trailers() {
        let seen = Seen::default();
        let waiter = Box::new(Recorder("end", seen.clone()));
        let mut body = MeteredBody::waited(ProxyBody::full("abc"), None, Some(waiter));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert_eq!(
            *seen.lock().unwrap(),
            [("end", "ended", None, 3)],
            "settled before the server polls again (it may not)"
        );
    }

    #[test]
    fn a_body_already_at_its_end_settles_its_waiter_at_once() {
        let seen = Seen::default();
        let waiter = Box::new(Recorder("end", seen.clone()));
        let body = MeteredBody::waited(ProxyBody::empty(), None, Some(waiter));
        assert_eq!(*seen.lock().unwrap(), [("end", "ended", None, 0)]);
        drop(body);
        assert_eq!(seen.lock().unwrap().len(), 1, "once");
    }

    #[tokio::test]
    async fn a_body_dropped_unfinished_settles_the_waiters_inside_it_first() {
        let seen = Seen::default();
        let inner = ProxyBody::boxed(Stalled(Some(Bytes::from_static(b"four"))));
        let mut response = http::Response::new(inner);
        let deeper = Box::new(Recorder("inner", seen.clone()));
        crate::core::body::watch(&mut response, deeper);
        let waiter = Box::new(Recorder("outer", seen.clone()));
        let mut body = MeteredBody::waited(response.into_body(), None, Some(waiter));
        body.frame().await.unwrap().unwrap();
        assert!(seen.lock().unwrap().is_empty());
        drop(body);
        assert_eq!(
            *seen.lock().unwrap(),
            [("inner", "dropped", None, 4), ("outer", "dropped", None, 4)]
        );
    }
}
