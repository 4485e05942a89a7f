//! Replaying a request body to the alternate service of a `Forward` fallback.
//!
//! The body is never buffered before the primary call: it streams to the primary
//! through a [`tee`] that keeps a copy of the data frames as long as they fit in
//! [`REPLAY_LIMIT`]. When the primary fails, the body can be replayed if it was read
//! to the end within the limit, or if the primary dropped it unread or part-read
//! within the limit (an open breaker, a refused connection): then the tee hands the
//! unread rest back and the replay streams it after the copied prefix.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::core::body::{BoxError, ProxyBody};

/// Most request-body bytes kept for a replay.
pub(super) const REPLAY_LIMIT: usize = 64 * 1024;

/// What the tee learnt of the body, shared with the layer.
#[derive(Default)]
struct Seen {
    /// Data frames that passed, while their total stays within the limit.
    frames: Vec<Bytes>,
    /// Their total length.
    len: usize,
    /// More than the limit passed: `frames` was dropped and no replay is possible.
    overflowed: bool,
    /// The body failed: no replay.
    failed: bool,
    /// The body was read to its end.
    ended: bool,
    /// Its trailers, when it had some.
    trailers: Option<HeaderMap>,
    /// The unread rest, handed back when the primary dropped the body unfinished.
    rest: Option<ProxyBody>,
}

impl Seen {
    fn record(&mut self, data: &Bytes) {
        if self.overflowed {
            return;
        }
        if self.len + data.len() > REPLAY_LIMIT {
            self.overflowed = true;
            self.frames = Vec::new();
            return;
        }
        self.len += data.len();
        self.frames.push(data.clone());
    }
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The layer's side of a tee: asks for the replay once the primary has answered.
pub(super) struct Replay(Arc<Mutex<Seen>>);

/// Wraps `body` so that it can be replayed; returns the body to send and its replay.
pub(super) fn tee(body: ProxyBody) -> (ProxyBody, Replay) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tee = TeeBody {
        rest: Some(body),
        seen: seen.clone(),
    };
    (ProxyBody::boxed(tee), Replay(seen))
}

impl Replay {
    /// The body again, if it can be sent again: `None` when more than the limit was
    /// read, the body failed, or the primary still holds it.
    pub(super) fn body(self) -> Option<ProxyBody> {
        let mut seen = lock(&self.0);
        if seen.overflowed || seen.failed {
            return None;
        }
        let frames = std::mem::take(&mut seen.frames);
        if seen.ended {
            let data = concat(frames);
            return Some(match seen.trailers.take() {
                Some(trailers) => ProxyBody::with_trailers(data, trailers),
                None => ProxyBody::full(data),
            });
        }
        let rest = seen.rest.take()?;
        Some(ProxyBody::boxed(ReplayBody {
            frames: frames.into(),
            rest,
        }))
    }
}

/// One `Bytes` of the frames, copying only when there are several.
fn concat(frames: Vec<Bytes>) -> Bytes {
    if frames.len() <= 1 {
        return frames.into_iter().next().unwrap_or_default();
    }
    let mut data = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    for frame in frames {
        data.extend_from_slice(&frame);
    }
    data.freeze()
}

/// The body the primary reads: the original, its frames copied into [`Seen`].
struct TeeBody {
    /// The original body; `None` once it ended or failed.
    rest: Option<ProxyBody>,
    seen: Arc<Mutex<Seen>>,
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = ready!(Pin::new(&mut *rest).poll_frame(cx));
        let mut seen = lock(&this.seen);
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    seen.record(data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    seen.trailers = Some(trailers.clone());
                    seen.ended = true;
                }
                seen.ended |= rest.is_end_stream();
            }
            Some(Err(_)) => seen.failed = true,
            None => seen.ended = true,
        }
        if seen.ended || seen.failed {
            this.rest = None;
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        let Some(rest) = self.rest.take() else {
            return;
        };
        let mut seen = lock(&self.seen);
        if rest.is_end_stream() {
            seen.ended = true;
        } else {
            seen.rest = Some(rest);
        }
    }
}

/// The body the alternate reads: the copied prefix, then the unread rest.
struct ReplayBody {
    frames: VecDeque<Bytes>,
    rest: ProxyBody,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(data) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let prefix: u64 = self.frames.iter().map(|f| f.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + prefix);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_body_read_to_its_end_replays_whole() {
        let (body, replay) = tee(ProxyBody::full("hello"));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        let again = replay.body().expect("replayable");
        assert_eq!(again.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn an_unread_body_is_handed_back() {
        let (body, replay) = tee(ProxyBody::full(vec![7u8; 100 * 1024]));
        drop(body);
        let again = replay.body().expect("replayable");
        assert_eq!(again.collect().await.unwrap().to_bytes().len(), 100 * 1024);
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-t", "1".parse().unwrap());
        let (body, replay) = tee(ProxyBody::with_trailers("ab", trailers));
        body.collect().await.unwrap();
        let again = replay.body().unwrap().collect().await.unwrap();
        assert_eq!(again.trailers().unwrap()["x-t"], "1");
        assert_eq!(again.to_bytes(), "ab");
    }

    #[tokio::test]
    async fn a_body_read_past_the_limit_is_not_replayable() {
        let (body, replay) = tee(ProxyBody::full(vec![7u8; REPLAY_LIMIT + 1]));
        body.collect().await.unwrap();
        assert!(replay.body().is_none());
    }

    #[tokio::test]
    async fn a_body_still_held_is_not_replayable() {
        let (body, replay) = tee(ProxyBody::full("x"));
        assert!(replay.body().is_none());
        drop(body);
    }
}
