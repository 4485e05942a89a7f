//! The body type of every request and response that crosses remora.
//!
//! Proxied bodies stream through untouched (`Incoming`); bodies remora writes itself are
//! small and whole (`Full`, or `Trailed` when it ends in trailers). An enum rather than a
//! boxed trait object keeps the hot path free of a per-request allocation; only a policy
//! that must watch a body's frames pays for `Boxed`, and only where it applies, only a
//! request that may be sent again pays for `Replay` (its recording), and only a
//! response whose gRPC status in trailers a layer waits for pays for `Watched`. A caller's request body counts its bytes as it is read; the
//! response the caller gets is a [`MeteredBody`], which counts them as they are sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::core::http1::{RequestBody, ResponseBody};

mod meter;
mod pooled;
mod replay;
mod watch;

pub use meter::{BodyMeter, EndWaiter, MeteredBody, NoWaiter, RunningBytes};
pub use pooled::{PooledBody, StreamSlot};
pub use replay::{Replay, ReplayBody};
pub use watch::{watch, BodyEnd, GrpcStatusBody, StatusWaiter};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A request or response body as remora forwards or produces it.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// A peer's body, streamed. `first` holds data already read ahead (to check a
        /// chunked body's framing before anything reaches the upstream; data, not a
        /// frame, which would make every body larger); `meter` counts the bytes read (a
        /// caller's request body is counted where it is read).
        Streamed {
            first: Option<Bytes>,
            #[pin]
            body: CallerBody,
            meter: BodyMeter,
        },
        /// A body remora wrote itself.
        Full { data: Option<Bytes> },
        /// A body remora wrote itself that ends in trailers (a gRPC message and its
        /// status): one data frame, then the trailers frame.
        Trailed {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
        },
        /// A body a policy wraps to watch its frames (one allocation, paid only by the
        /// requests that policy applies to).
        Boxed {
            #[pin]
            body: BoxBody<Bytes, BoxError>,
        },
        /// One copy of a body that may be sent again ([`Replay`]).
        Replay {
            body: ReplayBody,
        },
        /// An upstream's HTTP/2 response, streamed; its stream slot is freed when the
        /// body ends.
        Pooled {
            #[pin]
            body: PooledBody,
        },
        /// An upstream's HTTP/1 response on a connection of remora's own, read from
        /// the socket as it is polled; the connection goes back to its pool when the
        /// body ends.
        Http1 {
            body: ResponseBody<ProxyBody>,
        },
        /// A response whose gRPC status, in its trailers, someone deeper in the stack
        /// waits for (the attempt span, the request counter). Boxed: only such
        /// responses pay. (The request's own trace waits in the caller's
        /// [`MeteredBody`].)
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
    pub fn streamed(body: impl Into<CallerBody>) -> Self {
        Self::metered(None, body.into(), BodyMeter::default())
    }

    /// A peer's body (of which `first` was already read), streamed as it arrives, its
    /// bytes counted by `meter`.
    pub fn metered(first: Option<Bytes>, body: CallerBody, meter: BodyMeter) -> Self {
        Self::Streamed { first, body, meter }
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
            ProxyBodyProj::Streamed {
                first,
                mut body,
                meter,
            } => {
                let polled = match first.take() {
                    Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    None => body.as_mut().poll_frame(cx),
                };
                meter.observe(&polled, body.is_end_stream());
                polled
            }
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Trailed { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            ProxyBodyProj::Boxed { body } => body.poll_frame(cx),
            ProxyBodyProj::Replay { body } => Pin::new(body).poll_frame(cx),
            ProxyBodyProj::Pooled { body } => body.poll_frame(cx),
            ProxyBodyProj::Http1 { body } => Pin::new(body).poll_frame(cx),
            ProxyBodyProj::Watched { body } => Pin::new(body.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streamed { first, body, .. } => first.is_none() && body.is_end_stream(),
            Self::Full { data } => data.is_none(),
            Self::Trailed { data, trailers } => data.is_none() && trailers.is_none(),
            Self::Boxed { body } => body.is_end_stream(),
            Self::Replay { body } => body.is_end_stream(),
            Self::Pooled { body } => body.is_end_stream(),
            Self::Http1 { body } => body.is_end_stream(),
            Self::Watched { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streamed {
                first: None, body, ..
            } => body.size_hint(),
            Self::Streamed { .. } => SizeHint::default(),
            Self::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Self::Trailed { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Self::Boxed { body } => body.size_hint(),
            Self::Replay { body } => body.size_hint(),
            Self::Pooled { body } => body.size_hint(),
            Self::Http1 { body } => body.size_hint(),
            Self::Watched { body } => body.size_hint(),
        }
    }
}

/// A peer's body as it arrives: from a connection hyper serves (HTTP/2, and the
/// upstreams' HTTP/2 answers), or from a caller's HTTP/1.1 connection remora serves
/// itself.
#[derive(Debug)]
pub enum CallerBody {
    /// hyper's.
    Hyper(Incoming),
    /// remora's own HTTP/1.1 server's.
    Http1(RequestBody),
}

impl From<Incoming> for CallerBody {
    fn from(body: Incoming) -> Self {
        Self::Hyper(body)
    }
}

impl From<RequestBody> for CallerBody {
    fn from(body: RequestBody) -> Self {
        Self::Http1(body)
    }
}

impl Body for CallerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Http1(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(body) => body.is_end_stream(),
            Self::Http1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(body) => body.size_hint(),
            Self::Http1(body) => body.size_hint(),
        }
    }
}
