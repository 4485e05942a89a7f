//! A response body whose end (and gRPC status) someone waits for.
//!
//! A gRPC answer carries its status in the trailers (only a trailers-only answer puts
//! it in the headers), so whoever records that status deeper in the stack (the attempt
//! span, the request counter) has to wait for the end of the body. [`watch`] hands such
//! a [`StatusWaiter`] to a [`GrpcStatusBody`] wrapped around the response body, which
//! settles every waiter once: at the trailers, at an end without trailers, at a read
//! error, or when the body is dropped unfinished (the client went away). It also counts
//! the data bytes that passed. The request's own trace waits in the body the caller
//! gets instead ([`MeteredBody`](super::MeteredBody)), which every answer has anyway.
//!
//! The waiters are the business of the floors above (tracing, the proxy's counters);
//! this floor only knows that they wait. One response gets one wrapper however many
//! parties wait on it, and waiters settle in the order they were added: the attempt
//! (a child span, added deepest in the stack) before the request counter.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};

use super::{BoxError, ProxyBody};
use crate::core::grpc::grpc_status;

/// How a watched body ended, as its waiters record it.
#[derive(Debug, Clone, Copy)]
pub enum BodyEnd<'a> {
    /// It ended, with the `grpc-status` of its trailers when it had one.
    Ended(Option<u32>),
    /// Reading it failed.
    Failed(&'a BoxError),
    /// It was dropped before its end.
    Dropped,
}

impl<'a> BodyEnd<'a> {
    /// How a poll that returned `polled` ended its body, if it did; `ended` says whether
    /// the body is at its end after it (the last data frame: the server may not poll
    /// again before dropping the body).
    pub fn of(
        polled: &'a Poll<Option<Result<Frame<Bytes>, BoxError>>>,
        ended: bool,
    ) -> Option<Self> {
        match polled {
            Poll::Ready(Some(Ok(frame))) => match frame.trailers_ref() {
                Some(trailers) => Some(Self::Ended(grpc_status(trailers))),
                None if ended => Some(Self::Ended(None)),
                None => None,
            },
            Poll::Ready(Some(Err(error))) => Some(Self::Failed(error)),
            Poll::Ready(None) => Some(Self::Ended(None)),
            Poll::Pending => None,
        }
    }

    /// The gRPC status the body ended with, if it ended with one.
    pub fn grpc_status(self) -> Option<u32> {
        match self {
            Self::Ended(code) => code,
            Self::Failed(_) | Self::Dropped => None,
        }
    }
}

/// Someone waiting for the end of a response body (and its gRPC status).
pub trait StatusWaiter: Send + Sync + std::fmt::Debug + 'static {
    /// The body ended as `end` says, after `sent` data bytes passed; called exactly once.
    fn settle(self: Box<Self>, end: BodyEnd<'_>, sent: u64);
}

/// Most parties that wait on one response: the attempt span, the request span and log
/// line, the request counter.
const MAX_WAITERS: usize = 3;

/// Hands `waiter` to the [`GrpcStatusBody`] of `response`, wrapping its body first
/// unless an earlier waiter already did. A body that already ended settles the waiter at
/// once (it has no trailers to wait for).
pub fn watch(response: &mut Response<ProxyBody>, waiter: Box<dyn StatusWaiter>) {
    let body = response.body_mut();
    if body.is_end_stream() {
        waiter.settle(BodyEnd::Ended(None), 0);
        return;
    }
    let mut watched = match std::mem::take(body) {
        ProxyBody::Watched { body } => body,
        inner => Box::new(GrpcStatusBody {
            inner,
            sent: 0,
            waiters: Default::default(),
        }),
    };
    watched.add(waiter);
    *body = ProxyBody::Watched { body: watched };
}

/// A gRPC response body whose status someone waits for: frames pass through untouched;
/// the trailers (or the end, or the drop) settle the waiters.
pub struct GrpcStatusBody {
    inner: ProxyBody,
    /// Data bytes passed so far.
    sent: u64,
    waiters: [Option<Box<dyn StatusWaiter>>; MAX_WAITERS],
}

impl std::fmt::Debug for GrpcStatusBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcStatusBody")
            .field("waiters", &self.waiters)
            .finish_non_exhaustive()
    }
}

impl GrpcStatusBody {
    /// How many parties still wait.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.iter().flatten().count()
    }

    fn add(&mut self, waiter: Box<dyn StatusWaiter>) {
        match self.waiters.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(waiter),
            // More parties than the stack has never happens; should it, the newcomer
            // learns nothing rather than displacing one that waited first.
            None => waiter.settle(BodyEnd::Dropped, self.sent),
        }
    }

    /// Settles every waiter still waiting, in the order they came.
    fn settle(&mut self, end: BodyEnd<'_>) {
        for slot in &mut self.waiters {
            if let Some(waiter) = slot.take() {
                waiter.settle(end, self.sent);
            }
        }
    }
}

impl Body for GrpcStatusBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Poll::Ready(ready!(Pin::new(&mut this.inner).poll_frame(cx)));
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.sent += data.len() as u64;
            }
        }
        if let Some(end) = BodyEnd::of(&polled, this.inner.is_end_stream()) {
            this.settle(end);
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

impl Drop for GrpcStatusBody {
    fn drop(&mut self) {
        self.settle(BodyEnd::Dropped);
    }
}
