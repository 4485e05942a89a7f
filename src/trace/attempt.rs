//! One try of a call: the span of a retried (or every) attempt, and the trace context
//! written into the request that goes upstream.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Request, Response};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;

use crate::core::body::watch;
use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;
use crate::core::grpc::{grpc_status, grpc_status_at, GrpcStatusAt};

use super::*;

/// One try of a call to one endpoint; ended with [`Attempt::end`].
#[derive(Debug)]
#[must_use = "an attempt span must be ended"]
pub struct Attempt(AttemptRecord);

#[derive(Debug)]
enum AttemptRecord {
    /// Nothing to record.
    None,
    /// A try with its own span.
    Span(Arc<LiveSpan>),
    /// The first try, folded into the call span (`AttemptSpans::Retries`); its facts
    /// are kept in case a retry follows.
    First {
        call: CallTrace,
        started: SystemTime,
        method: &'static str,
        endpoint: SocketAddr,
    },
}

/// Starts one try of `request` to `endpoint` and writes the trace context the upstream
/// continues into the request's headers. Call it once the request points at the
/// endpoint. Without a [`CallTrace`] in the request's extensions, it does nothing.
///
/// The try gets a span of its own (a child of the call span) unless it is a call's first
/// try under [`AttemptSpans::Retries`]: then the call span's own context is sent, and the
/// try becomes a span only if a retry follows.
pub fn attempt<B>(request: &mut Request<B>, endpoint: SocketAddr) -> Attempt {
    let Some(call) = request.extensions().get::<CallTrace>().cloned() else {
        return Attempt(AttemptRecord::None);
    };
    let inner = &call.0;
    let tracing = &inner.tracing.0;
    let number = inner.attempts.fetch_add(1, Ordering::Relaxed) + 1;
    if tracing.attempt_spans == AttemptSpans::Retries {
        if number == 1 {
            inner.write_context(&inner.cx, request);
            if inner.span.is_none() {
                return Attempt(AttemptRecord::None);
            }
            let method = method_name(request.method());
            return Attempt(AttemptRecord::First {
                call,
                started: SystemTime::now(),
                method,
                endpoint,
            });
        }
        inner.record_first_try();
    }
    // The try's own facts only: what the request is (path, protocol, service, gRPC
    // method) is on the call span, its parent.
    let method = method_name(request.method());
    let parent = inner.retried.get().unwrap_or(&inner.cx);
    let (cx, span) = inner.tracing.start_span(
        parent,
        Cow::Borrowed("attempt"),
        Kind::Client,
        SystemTime::now,
        |recording| attempt_attributes(recording, method, endpoint, number),
    );
    inner.write_context(&cx, request);
    match span {
        Some(span) => Attempt(AttemptRecord::Span(span)),
        None => Attempt(AttemptRecord::None),
    }
}

/// Records the attributes of an attempt span.
fn attempt_attributes(
    recording: &mut Recording,
    method: &'static str,
    endpoint: SocketAddr,
    number: u32,
) {
    let attributes = &mut recording.attributes;
    attributes.str("http.request.method", method);
    attributes.ip("server.address", endpoint.ip());
    attributes.int("server.port", i64::from(endpoint.port()));
    attributes.socket_addr("remora.endpoint", endpoint);
    attributes.int("remora.attempt", i64::from(number));
}

impl CallInner {
    /// Writes `cx` into a try's request, in place of the caller's trace headers.
    fn write_context<B>(&self, cx: &Context, request: &mut Request<B>) {
        let propagators = &self.tracing.0.propagators;
        if self.carried.load(Ordering::Relaxed) {
            propagators.inject(cx, request.headers_mut());
        } else {
            propagators.write(cx, request.headers_mut());
        }
    }

    /// Records the kept first try as a span of its own (a retry is starting).
    ///
    /// The first try went upstream with the call span's id as its parent, so the spans
    /// the upstream made for it name that id. The try's span takes that id over, and the
    /// call span is exported under a new one, the parent of the try and of the tries to
    /// come: every try appears once, with its upstream's spans under it, and a call
    /// that is never retried costs nothing for it.
    fn record_first_try(&self) {
        let first = self
            .first_try
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let (Some(first), Some(call), Some(sink)) = (first, &self.span, &self.tracing.0.sink)
        else {
            return;
        };
        let renamed = call.hand_over_id();
        let span = LiveSpan::start(
            sink,
            call.context().clone(),
            &renamed,
            Kind::Client,
            Cow::Borrowed("attempt"),
            first.started,
            64,
        );
        span.record(|recording| {
            attempt_attributes(recording, first.method, first.endpoint, 1);
            first.outcome.record(recording);
        });
        span.end_at(first.ended);
        let _ = self.retried.set(self.cx.with_remote_span_context(renamed));
    }
}

impl Attempt {
    /// Records how the try ended (at response headers) and ends its span; a gRPC answer
    /// whose status comes in its trailers is recorded when its body ends instead.
    pub fn end(self, result: &mut Result<Response<ProxyBody>, ProxyError>) {
        match self.0 {
            AttemptRecord::None => {}
            AttemptRecord::Span(span) => {
                if let Some(waiting) = waiting_for_trailers(&span, result) {
                    if let Ok(response) = result {
                        watch(response, Box::new(waiting));
                    }
                    return;
                }
                span.record(|recording| TryOutcome::of(result).record(recording));
                span.end();
            }
            // No span unless a retry follows, and none follows a response that streams:
            // the call span records this try's trailers.
            AttemptRecord::First {
                call,
                started,
                method,
                endpoint,
            } => {
                let first = FirstTry {
                    started,
                    ended: SystemTime::now(),
                    method,
                    endpoint,
                    outcome: TryOutcome::of(result),
                };
                *call
                    .0
                    .first_try
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(first);
            }
        }
    }
}

/// When `result` is a gRPC answer whose status comes in its trailers: the attempt span
/// (its HTTP status recorded now) to settle at the trailers.
fn waiting_for_trailers(
    span: &Arc<LiveSpan>,
    result: &Result<Response<ProxyBody>, ProxyError>,
) -> Option<trailers::AttemptWaiting> {
    let response = result.as_ref().ok()?;
    let headers = response.headers();
    if grpc_status(headers).is_some() || grpc_status_at(headers) != GrpcStatusAt::Trailers {
        return None;
    }
    let status = response.status().as_u16();
    span.record(|recording| {
        recording
            .attributes
            .int("http.response.status_code", i64::from(status));
    });
    Some(trailers::AttemptWaiting {
        span: span.clone(),
        status,
    })
}
