//! A request body that can be sent again: what one copy reads of the original is
//! recorded, up to a bound, so that a later copy sends the same frames.
//!
//! [`Replay::wrap`] turns a body into the copy to send first and a [`Replay`] that makes
//! more. The copy that reads the original records every data frame it passes on, and
//! the trailers, while their total stays within the bound. A copy made later sends the
//! recording again, then (when the original has not ended) reads on where the last
//! reader stopped, recording as it goes. Who sends a copy and when (retry, the fallback's
//! alternate) is the business of the policies; this floor only keeps the frames.
//!
//! One copy at a time reads the original. No copy can be made while another still holds
//! the original unfinished (an earlier attempt whose connection is still sending it, or
//! a client stream still open): [`Replay::try_body`] says no until that copy lets go.
//! Once the original has ended within the bound, copies need nothing but the recording,
//! and any number of them may be read at once.
//!
//! A body is not replayable once more than the bound was read from it, or once reading
//! it failed. The copy reading it is never cut short by the bound: it stops recording,
//! drops what it kept, and passes the rest on.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::{BoxError, ProxyBody};

/// Makes copies of a body to send it again.
pub struct Replay {
    shared: Arc<Shared>,
}

/// One copy of a replayable body, as it is sent.
pub struct ReplayBody {
    shared: Arc<Shared>,
    /// Recorded frames this copy has sent (an index into the recording).
    sent: usize,
    /// Whether this copy holds the original and reads on after the recording.
    reads: bool,
    /// Whether this copy has sent the recorded trailers.
    trailers_sent: bool,
}

/// What every copy and the [`Replay`] share.
struct Shared {
    /// Most bytes recorded.
    max_bytes: usize,
    /// Held for a frame's bookkeeping (and the poll of the original that yields it),
    /// never across an await.
    state: Mutex<State>,
}

/// The recording and the original.
struct State {
    /// Data frames read from the original so far, while their total is within the bound.
    frames: Vec<Bytes>,
    /// Their total length.
    len: usize,
    /// The original's trailers, once read.
    trailers: Option<HeaderMap>,
    /// The original's unread rest; `None` once it ended or failed.
    rest: Option<ProxyBody>,
    /// Whether a copy holds `rest` (only that copy reads it).
    held: bool,
    /// Why the body cannot be replayed, once it cannot.
    lost: Option<Lost>,
}

/// Why a body cannot be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// More than the bound was read.
    Capped,
    /// Reading the original failed.
    Failed,
}

impl Replay {
    /// `body`, to be sent first, recording up to `max_bytes` of it; and what makes
    /// copies of it.
    pub fn wrap(body: ProxyBody, max_bytes: usize) -> (ProxyBody, Self) {
        let shared = Arc::new(Shared {
            max_bytes,
            state: Mutex::new(State {
                frames: Vec::new(),
                len: 0,
                trailers: None,
                rest: Some(body),
                held: true,
                lost: None,
            }),
        });
        let first = ReplayBody {
            shared: shared.clone(),
            sent: 0,
            reads: true,
            trailers_sent: false,
        };
        (ProxyBody::Replay { body: first }, Self { shared })
    }

    /// A copy of the body to send again; `None` when it cannot be replayed (more than
    /// the bound was read, reading it failed) or not now (a copy still holds the
    /// original unfinished).
    pub fn try_body(&self) -> Option<ProxyBody> {
        let mut state = self.shared.lock();
        if state.lost.is_some() {
            return None;
        }
        let reads = state.rest.is_some();
        if reads {
            if state.held {
                return None;
            }
            state.held = true;
        }
        let copy = ReplayBody {
            shared: self.shared.clone(),
            sent: 0,
            reads,
            trailers_sent: false,
        };
        Some(ProxyBody::Replay { body: copy })
    }

    /// Whether the body can no longer be sent again, whatever happens.
    #[cfg(test)]
    pub(crate) fn is_lost(&self) -> bool {
        self.shared.lock().lost.is_some()
    }
}

impl Shared {
    /// The state. A panic while it was held leaves at worst a recording that is not
    /// replayed, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Reads the original's next frame, recording it.
    fn read(
        &mut self,
        cx: &mut Context<'_>,
        max_bytes: usize,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = ready!(Pin::new(&mut *rest).poll_frame(cx));
        let at_end = rest.is_end_stream();
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.record(data, max_bytes);
                } else if let Some(trailers) = frame.trailers_ref() {
                    if self.lost.is_none() {
                        self.trailers = Some(trailers.clone());
                    }
                }
                if at_end || frame.is_trailers() {
                    self.end();
                }
            }
            Some(Err(_)) => {
                self.lose(Lost::Failed);
                self.end();
            }
            None => self.end(),
        }
        Poll::Ready(polled)
    }

    fn record(&mut self, data: &Bytes, max_bytes: usize) {
        if self.lost.is_some() {
            return;
        }
        if self.len + data.len() > max_bytes {
            self.lose(Lost::Capped);
            return;
        }
        self.len += data.len();
        self.frames.push(data.clone());
    }

    /// The body can no longer be replayed: the recording goes.
    fn lose(&mut self, why: Lost) {
        self.lost.get_or_insert(why);
        self.frames = Vec::new();
        self.len = 0;
        self.trailers = None;
    }

    /// The original ended (or failed): copies made from now on need only the recording.
    fn end(&mut self) {
        self.rest = None;
        self.held = false;
    }

    /// Bytes of the recording from frame `from` on.
    fn recorded_after(&self, from: usize) -> u64 {
        self.frames
            .get(from..)
            .map_or(0, |frames| frames.iter().map(|f| f.len() as u64).sum())
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let shared = &*this.shared;
        let mut state = shared.lock();
        if let Some(data) = state.frames.get(this.sent) {
            this.sent += 1;
            return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
        }
        if !this.reads {
            // Made after the original ended: only its trailers may be left to send.
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(state.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        // Nothing can ask for another copy once the `Replay` is gone and this copy is
        // the last: recording on would only hold memory.
        if Arc::strong_count(&this.shared) == 1 && state.lost.is_none() {
            state.lose(Lost::Capped);
        }
        let polled = ready!(state.read(cx, shared.max_bytes));
        this.sent = state.frames.len();
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        let state = self.shared.lock();
        if self.sent < state.frames.len() {
            return false;
        }
        if self.reads {
            return state.rest.as_ref().is_none_or(Body::is_end_stream);
        }
        self.trailers_sent || state.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let state = self.shared.lock();
        let recorded = state.recorded_after(self.sent);
        let Some(rest) = state.rest.as_ref().filter(|_| self.reads) else {
            return SizeHint::with_exact(recorded);
        };
        let rest = rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + recorded);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + recorded);
        }
        hint
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        if !self.reads {
            return;
        }
        let mut state = self.shared.lock();
        if state.rest.is_none() {
            return;
        }
        // The original goes back unfinished, for the next copy to read on.
        state.held = false;
        if state.lost.is_some() {
            // No copy will ever read it: let the client's stream go.
            state.rest = None;
        }
    }
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Replay")
            .field("recorded", &state.len)
            .field("ended", &state.rest.is_none())
            .field("held", &state.held)
            .field("lost", &state.lost)
            .finish()
    }
}

impl std::fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayBody")
            .field("sent", &self.sent)
            .field("reads", &self.reads)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
