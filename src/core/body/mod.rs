//! The body type of every request and response that crosses remora.
//!
//! Proxied bodies stream through untouched (`Incoming`); bodies remora writes itself are
//! small and whole (`Full`, or `Trailed` when it ends in trailers). An enum rather than a
//! boxed trait object keeps the hot path free of a per-request allocation; only a policy
//! that must watch or replay a body's frames pays for `Boxed`, and only where it applies,
//! and only a gRPC response whose status comes in trailers pays for `Watched`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

mod pooled;
mod watch;

pub use pooled::{ConnectionHome, Lease, PooledBody, StreamSlot};
pub use watch::{watch, BodyEnd, GrpcStatusBody, StatusWaiter};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A request or response body as remora forwards or produces it.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// A peer's body, streamed. `first` holds a frame already read ahead (to check a
        /// chunked body's framing before anything reaches the upstream).
        Streamed {
            first: Option<Frame<Bytes>>,
            #[pin]
            body: Incoming,
        },
        /// A body remora wrote itself.
        Full { data: Option<Bytes> },
        /// A body remora wrote itself that ends in trailers (a gRPC message and its
        /// status): one data frame, then the trailers frame.
        Trailed {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
        },
        /// A body a policy wraps to watch or replay its frames (one allocation, paid
        /// only by the requests that policy applies to).
        Boxed {
            #[pin]
            body: BoxBody<Bytes, BoxError>,
        },
        /// A frame already read from a body (retry's bounded read-ahead), then the rest
        /// of that body. Boxed because the rest is itself a `ProxyBody`.
        Prefixed {
            first: Option<Frame<Bytes>>,
            rest: Box<ProxyBody>,
        },
        /// An upstream's response, streamed; its connection goes back to the pool (or
        /// its HTTP/2 stream slot is freed) when the body ends.
        Pooled {
            #[pin]
            body: PooledBody,
        },
        /// A gRPC response whose status, in its trailers, someone waits for (the request
        /// span, the access log, the request counter). Boxed: only such responses pay.
        Watched {
            body: Box<GrpcStatusBody>,
        },
    }
}

impl ProxyBody {
    /// An empty body.
    pub fn empty() -> Self {
        Self::Full { data: None }
    }

    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// A data frame (skipped when empty), then `trailers`.
    pub fn with_trailers(data: impl Into<Bytes>, trailers: HeaderMap) -> Self {
        let data: Bytes = data.into();
        Self::Trailed {
            data: (!data.is_empty()).then_some(data),
            trailers: Some(trailers),
        }
    }

    /// Any body, boxed.
    pub fn boxed<B>(body: B) -> Self
    where
        B: Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
    {
        Self::Boxed {
            body: BoxBody::new(body),
        }
    }

    /// A peer's body, streamed as it arrives.
    pub fn streamed(body: Incoming) -> Self {
        Self::Streamed { first: None, body }
    }

    /// A peer's body of which `first` was already read.
    pub fn streamed_after(first: Frame<Bytes>, body: Incoming) -> Self {
        Self::Streamed {
            first: Some(first),
            body,
        }
    }

    /// `first` (a frame already read from `rest`), then the rest of that body.
    pub fn prefixed(first: Frame<Bytes>, rest: ProxyBody) -> Self {
        Self::Prefixed {
            first: Some(first),
            rest: Box::new(rest),
        }
    }
}

impl Default for ProxyBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Streamed { first, body } => {
                if let Some(frame) = first.take() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                body.poll_frame(cx).map_err(Into::into)
            }
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Trailed { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            ProxyBodyProj::Boxed { body } => body.poll_frame(cx),
            ProxyBodyProj::Prefixed { first, rest } => {
                if let Some(frame) = first.take() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                Pin::new(rest.as_mut()).poll_frame(cx)
            }
            ProxyBodyProj::Pooled { body } => body.poll_frame(cx),
            ProxyBodyProj::Watched { body } => Pin::new(body.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streamed { first, body } => first.is_none() && body.is_end_stream(),
            Self::Full { data } => data.is_none(),
            Self::Trailed { data, trailers } => data.is_none() && trailers.is_none(),
            Self::Boxed { body } => body.is_end_stream(),
            Self::Prefixed { first, rest } => first.is_none() && rest.is_end_stream(),
            Self::Pooled { body } => body.is_end_stream(),
            Self::Watched { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streamed { first: None, body } => body.size_hint(),
            Self::Streamed { .. } => SizeHint::default(),
            Self::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Self::Trailed { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Self::Boxed { body } => body.size_hint(),
            Self::Prefixed { first, rest } => {
                let ahead = first
                    .as_ref()
                    .and_then(Frame::data_ref)
                    .map_or(0, |d| d.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + ahead);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + ahead);
                }
                hint
            }
            Self::Pooled { body } => body.size_hint(),
            Self::Watched { body } => body.size_hint(),
        }
    }
}
