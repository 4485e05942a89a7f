//! Observation that waits for a gRPC response's trailers.
//!
//! A gRPC answer carries its status in the trailers (only a trailers-only answer puts
//! it in the headers), so whoever records that status — the request span and access
//! log line ([`RequestTrace::finish`](super::RequestTrace::finish)), the attempt span
//! ([`Attempt::end`](super::Attempt::end)) and the request counter (the proxy) — has to
//! wait for the end of the body. [`watch`] hands such a waiter to a [`GrpcStatusBody`]
//! wrapped around the response body, which settles every waiter once: at the trailers,
//! at an end without trailers, at a read error, or when the body is dropped unfinished
//! (the client went away).
//!
//! Only gRPC responses whose headers carry no `grpc-status` are wrapped (see
//! [`grpc_status_at`]); every other response keeps its body and its plain path. One
//! response gets one wrapper, one allocation, however many parties wait on it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use std::sync::Arc;

use opentelemetry::trace::Status;

use super::span::{LiveSpan, Recording};
use super::{error_status, grpc_status, header_text, RequestTrace};
use crate::body::{BoxError, ProxyBody};
use crate::metrics::{Direction, GrpcCode};
use crate::proxy::RequestCount;

/// Where a response's gRPC status is, if it is a gRPC response at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcStatusAt {
    /// Not a gRPC response (its `content-type` is not `application/grpc...`).
    NotGrpc,
    /// In the headers (a trailers-only answer): the code, when it is a number.
    Headers(Option<u32>),
    /// Not in the headers: it comes in the trailers, if at all.
    Trailers,
}

/// Where the gRPC status of a response with `headers` is. A plain response costs one
/// lookup of a standard header.
pub fn grpc_status_at(headers: &HeaderMap) -> GrpcStatusAt {
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return GrpcStatusAt::NotGrpc;
    }
    match headers.get("grpc-status") {
        Some(_) => GrpcStatusAt::Headers(grpc_status(headers)),
        None => GrpcStatusAt::Trailers,
    }
}

/// Someone waiting for a response's gRPC status.
// NOTE: a waiter is moved once, into the wrapper's (boxed) slots; boxing the large
// variant would only add an allocation per watched response.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Waiter {
    /// The span of the attempt that got the response.
    Attempt(AttemptWaiting),
    /// The request span and the access log line.
    Request(RequestWaiting),
    /// The request counter.
    Count(RequestCount),
}

/// An attempt span whose response status arrives in trailers.
#[derive(Debug)]
pub struct AttemptWaiting {
    pub(super) span: Arc<LiveSpan>,
    /// The HTTP status of the response (already on the span).
    pub(super) status: u16,
}

/// A request span and access log line whose response status arrives in trailers.
#[derive(Debug)]
pub struct RequestWaiting {
    pub(super) trace: RequestTrace,
    /// The HTTP status sent to the caller (already on the span).
    pub(super) status: u16,
    /// The endpoint that answered.
    pub(super) endpoint: Option<SocketAddr>,
    /// `x-remora-error` of the response, for the span status.
    pub(super) reason: Option<HeaderValue>,
}

/// Hands `waiter` to the [`GrpcStatusBody`] of `response`, wrapping its body first
/// unless an earlier waiter already did. A body that already ended settles the waiter at
/// once (it has no trailers to wait for).
pub fn watch(response: &mut Response<ProxyBody>, waiter: Waiter) {
    let body = response.body_mut();
    if body.is_end_stream() {
        waiter.settle(End::Ended(None));
        return;
    }
    let mut watched = match std::mem::take(body) {
        ProxyBody::Watched { body } => body,
        inner => Box::new(GrpcStatusBody {
            inner,
            waiters: Waiters::default(),
        }),
    };
    watched.waiters.add(waiter);
    *body = ProxyBody::Watched { body: watched };
}

/// A gRPC response body whose status someone waits for: frames pass through untouched;
/// the trailers (or the end, or the drop) settle the waiters.
pub struct GrpcStatusBody {
    inner: ProxyBody,
    waiters: Waiters,
}

impl std::fmt::Debug for GrpcStatusBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcStatusBody")
            .field("waiters", &self.waiters)
            .finish_non_exhaustive()
    }
}

/// At most one waiter of each kind; each is taken when it is settled.
#[derive(Debug, Default)]
struct Waiters {
    attempt: Option<AttemptWaiting>,
    request: Option<RequestWaiting>,
    count: Option<RequestCount>,
}

/// How a watched body ended, as its waiters record it.
#[derive(Debug, Clone, Copy)]
enum End<'a> {
    /// It ended, with the `grpc-status` of its trailers when it had one.
    Ended(Option<u32>),
    /// Reading it failed.
    Failed(&'a BoxError),
    /// It was dropped before its end.
    Dropped,
}

impl Waiters {
    fn add(&mut self, waiter: Waiter) {
        // A second waiter of a kind never happens; should it, the first one still ends.
        let replaced = match waiter {
            Waiter::Attempt(w) => self.attempt.replace(w).map(Waiter::Attempt),
            Waiter::Request(w) => self.request.replace(w).map(Waiter::Request),
            Waiter::Count(w) => self.count.replace(w).map(Waiter::Count),
        };
        if let Some(replaced) = replaced {
            replaced.settle(End::Dropped);
        }
    }

    /// Settles every waiter still waiting; the attempt (a child span) ends first.
    fn settle(&mut self, end: End<'_>) {
        if let Some(waiter) = self.attempt.take() {
            Waiter::Attempt(waiter).settle(end);
        }
        if let Some(waiter) = self.request.take() {
            Waiter::Request(waiter).settle(end);
        }
        if let Some(waiter) = self.count.take() {
            Waiter::Count(waiter).settle(end);
        }
    }
}

impl Waiter {
    fn settle(self, end: End<'_>) {
        match self {
            Self::Attempt(AttemptWaiting { span, status }) => {
                span.record(|recording| {
                    record_end(recording, status, Direction::Outbound, None, end);
                });
                span.end();
            }
            Self::Request(waiting) => {
                let RequestWaiting {
                    trace,
                    status,
                    endpoint,
                    reason,
                } = waiting;
                let call = &trace.call.0;
                if let Some(span) = &call.span {
                    span.record(|recording| {
                        let reason = reason.as_ref().map(header_text);
                        record_end(recording, status, call.direction, reason, end);
                    });
                    span.end();
                }
                if call.tracing.0.access_log {
                    trace.access_log(status, end.grpc_status(), endpoint);
                }
            }
            Self::Count(count) => count.record(GrpcCode::of(end.grpc_status())),
        }
    }
}

impl End<'_> {
    fn grpc_status(self) -> Option<u32> {
        match self {
            Self::Ended(code) => code,
            Self::Failed(_) | Self::Dropped => None,
        }
    }
}

/// Records on a recording span how its response ended (the HTTP status is on it already).
fn record_end(
    recording: &mut Recording,
    status: u16,
    direction: Direction,
    reason: Option<std::borrow::Cow<'_, str>>,
    end: End<'_>,
) {
    match end {
        End::Ended(code) => {
            if let Some(code) = code {
                recording
                    .attributes
                    .int("rpc.grpc.status_code", i64::from(code));
            }
            if let Some(error) = error_status(status, code, direction, reason) {
                recording.set_status(error);
            }
        }
        End::Failed(error) => {
            recording.attributes.str("error.type", "response-body");
            recording.set_status(Status::error(format!("response body: {error}")));
        }
        End::Dropped => recording.attributes.str("error.type", "cancelled"),
    }
}

impl Body for GrpcStatusBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => match frame.trailers_ref() {
                Some(trailers) => this.waiters.settle(End::Ended(grpc_status(trailers))),
                // The last data frame: the server may not poll again before dropping us.
                None if this.inner.is_end_stream() => this.waiters.settle(End::Ended(None)),
                None => {}
            },
            Some(Err(error)) => this.waiters.settle(End::Failed(error)),
            None => this.waiters.settle(End::Ended(None)),
        }
        Poll::Ready(polled)
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
        self.waiters.settle(End::Dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn grpc_response(body: ProxyBody) -> Response<ProxyBody> {
        Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(body)
            .unwrap()
    }

    fn trailers(code: &'static str) -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(code));
        trailers
    }

    #[test]
    fn only_grpc_answers_without_a_status_in_headers_wait_for_trailers() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status_at(&headers), GrpcStatusAt::NotGrpc);
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(grpc_status_at(&headers), GrpcStatusAt::NotGrpc);
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert_eq!(grpc_status_at(&headers), GrpcStatusAt::Headers(Some(5)));
        headers.remove("grpc-status");
        assert_eq!(grpc_status_at(&headers), GrpcStatusAt::Trailers);
    }

    #[tokio::test]
    async fn one_wrapper_holds_every_waiter_and_passes_frames_through() {
        let body = ProxyBody::with_trailers("message", trailers("7"));
        let mut response = grpc_response(body);
        let tracing = super::super::Tracing::disabled();
        let mut request = http::Request::new(());
        let trace = tracing.start(&mut request, Direction::Outbound);
        let waiting = RequestWaiting {
            trace,
            status: 200,
            endpoint: None,
            reason: None,
        };
        watch(&mut response, Waiter::Request(waiting));
        let (span, ended) = super::super::span::test_span();
        let attempt = AttemptWaiting { span, status: 200 };
        watch(&mut response, Waiter::Attempt(attempt));
        let ProxyBody::Watched { body } = response.body() else {
            panic!("not watched");
        };
        assert!(body.waiters.request.is_some() && body.waiters.attempt.is_some());
        assert!(
            ended.take().is_empty(),
            "the attempt waits for the trailers"
        );
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "7");
        assert_eq!(collected.to_bytes(), "message");
        let [span] = &ended.take()[..] else {
            panic!("the attempt span ended at the trailers");
        };
        assert_eq!(
            span.recording.status,
            opentelemetry::trace::Status::error("gRPC status 7")
        );
    }

    #[test]
    fn an_ended_body_is_not_wrapped() {
        let mut response = grpc_response(ProxyBody::empty());
        let (span, ended) = super::super::span::test_span();
        let attempt = AttemptWaiting { span, status: 200 };
        watch(&mut response, Waiter::Attempt(attempt));
        assert!(matches!(response.body(), ProxyBody::Full { .. }));
        assert_eq!(ended.take().len(), 1, "settled at once");
    }
}
