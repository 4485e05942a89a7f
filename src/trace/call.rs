//! The trace of one call: the request span, its first try kept until a retry needs it,
//! and what the answer records on it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::Context;

use crate::core::body::{ProxyBody, RunningBytes};
use crate::core::call::EndpointUsed;
use crate::core::error::{ProxyError, ERROR_HEADER, FALLBACK_HEADER};
use crate::core::grpc::{grpc_status, grpc_status_code, is_grpc_type, GrpcStatusAt, GRPC_STATUS};
use crate::core::labels::Direction;

use super::*;
use crate::access::REQUEST_ID;

/// Request extension: the request span's context, shared by every attempt of the call.
/// Cloning the request's extensions (as retries do) keeps attempts numbered and parented.
#[derive(Clone)]
pub struct CallTrace(pub(super) Arc<CallInner>);

pub(super) struct CallInner {
    pub(super) tracing: Tracing,
    pub(super) cx: Context,
    /// The request span, when it is recorded (sampled, with a collector).
    pub(super) span: Option<Arc<LiveSpan>>,
    pub(super) attempts: AtomicU32,
    /// Set once routing found the service.
    pub(super) service: OnceLock<Arc<str>>,
    pub(super) direction: Direction,
    /// Whether the request may hold trace headers (the caller sent some, or a route
    /// edited its headers): only then does each try look for them to remove before
    /// writing its own.
    pub(super) carried: std::sync::atomic::AtomicBool,
    /// The first try, kept while the call records and `AttemptSpans::Retries` folds it
    /// into the call span: recorded as a span of its own if a retry follows.
    pub(super) first_try: std::sync::Mutex<Option<FirstTry>>,
    /// The parent of tries after the first, once the first try took over the call
    /// span's id (`AttemptSpans::Retries`): the call span under its new id.
    pub(super) retried: OnceLock<Context>,
    /// Request body bytes read from the caller so far, for the access log line.
    pub(super) request_bytes: AtomicU64,
}

impl RunningBytes for CallInner {
    fn show(&self, bytes: u64) {
        self.request_bytes.store(bytes, Ordering::Relaxed);
    }
}

/// What is kept of a call's first try, to record its span if the call is retried.
pub(super) struct FirstTry {
    pub(super) started: SystemTime,
    pub(super) ended: SystemTime,
    pub(super) method: &'static str,
    pub(super) endpoint: SocketAddr,
    pub(super) outcome: TryOutcome,
}

/// How a try ended, as its span records it.
pub(super) struct TryOutcome {
    pub(super) status: Option<u16>,
    pub(super) grpc_status: Option<u32>,
    /// `error.type` and the error's text, for tries that got no response.
    pub(super) error: Option<(&'static str, String)>,
}

impl TryOutcome {
    pub(super) fn of(result: &Result<Response<ProxyBody>, ProxyError>) -> Self {
        match result {
            Ok(response) => Self {
                status: Some(response.status().as_u16()),
                grpc_status: grpc_status(response.headers()),
                error: None,
            },
            Err(error) => Self {
                status: None,
                grpc_status: None,
                error: Some((error.reason(), error.to_string())),
            },
        }
    }

    pub(super) fn record(self, recording: &mut Recording) {
        let attributes = &mut recording.attributes;
        if let Some(status) = self.status {
            attributes.int("http.response.status_code", i64::from(status));
            if let Some(code) = self.grpc_status {
                attributes.int("rpc.grpc.status_code", i64::from(code));
            }
            if let Some(error) = error_status(status, self.grpc_status, Direction::Outbound, None) {
                recording.set_status(error);
            }
        }
        if let Some((reason, text)) = self.error {
            recording.attributes.str("error.type", reason);
            recording.set_status(Status::error(text));
        }
    }
}

impl std::fmt::Debug for CallTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTrace")
            .field("span", self.0.cx.span().span_context())
            .finish_non_exhaustive()
    }
}

impl CallTrace {
    /// The request span's context.
    pub fn context(&self) -> &Context {
        &self.0.cx
    }

    /// Where the request body shows the bytes read from the caller, when the access log
    /// line will say them (the call's own trace: no allocation).
    pub fn request_bytes(&self) -> Option<Arc<dyn RunningBytes>> {
        let logged = self.0.tracing.0.access_log;
        logged.then(|| self.0.clone() as Arc<dyn RunningBytes>)
    }
}

/// Names the service `request` was routed to, on its span and in its access log line.
pub fn routed<B>(request: &Request<B>, service: &Arc<str>) {
    let Some(call) = request.extensions().get::<CallTrace>() else {
        return;
    };
    let _ = call.0.service.set(service.clone());
    if let Some(span) = &call.0.span {
        span.record(|recording| recording.attributes.str("remora.service", service));
    }
}

/// Says that a route edited the request's headers after its trace began: each try then
/// looks for trace headers to replace, as for a caller that sent some (a route may set
/// one, and no stale trace header reaches the upstream).
pub fn headers_edited<B>(request: &Request<B>) {
    if let Some(call) = request.extensions().get::<CallTrace>() {
        call.0.carried.store(true, Ordering::Relaxed);
    }
}

/// One request's trace, from [`Tracing::start`] to [`RequestTrace::finish`].
#[derive(Debug)]
pub struct RequestTrace {
    pub(super) call: CallTrace,
    pub(super) started: Instant,
    pub(super) request_id: HeaderValue,
    pub(super) method: Method,
    pub(super) uri: Uri,
    /// The caller's SPIFFE ID, when it came over mutual TLS.
    pub(super) peer_identity: Option<Arc<str>>,
    /// The caller's address, as text.
    pub(super) client: Option<Arc<str>>,
    /// The request's `Host` (or authority), for the access log.
    pub(super) host: Option<HeaderValue>,
}

/// What the access log line says of the answer, read from its head (its byte count
/// comes at the end of its body).
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) endpoint: Option<EndpointUsed>,
    /// `x-remora-error`: why remora answered itself.
    pub(super) reason: Option<HeaderValue>,
    /// `x-remora-fallback`: the trigger of a fallback answer.
    pub(super) fallback: Option<HeaderValue>,
}

impl Answer {
    fn of(response: &Response<ProxyBody>, head: &AnswerHead<'_>) -> Self {
        Self {
            status: response.status().as_u16(),
            endpoint: response.extensions().get::<EndpointUsed>().copied(),
            reason: head.reason.cloned(),
            fallback: head.fallback.cloned(),
        }
    }
}

/// The headers of an answer that its trace reads, found in one pass over its headers:
/// a lookup by name hashes the name, and an answer carries few headers, most of them
/// standard ones that compare to these names by a tag.
#[derive(Debug, Default)]
struct AnswerHead<'a> {
    request_id: bool,
    /// A `content-type` of `application/grpc...`.
    grpc: bool,
    grpc_status: Option<&'a HeaderValue>,
    /// `x-remora-error`: why remora answered itself.
    reason: Option<&'a HeaderValue>,
    /// `x-remora-fallback`: the trigger of a fallback answer.
    fallback: Option<&'a HeaderValue>,
}

impl<'a> AnswerHead<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut head = Self::default();
        // The first value of a name, as `HeaderMap::get` gives.
        for (name, value) in headers {
            if name == http::header::CONTENT_TYPE {
                head.grpc = head.grpc || is_grpc_type(value);
            } else if name == REQUEST_ID {
                head.request_id = true;
            } else if name == GRPC_STATUS {
                head.grpc_status = head.grpc_status.or(Some(value));
            } else if name == ERROR_HEADER {
                head.reason = head.reason.or(Some(value));
            } else if name == FALLBACK_HEADER {
                head.fallback = head.fallback.or(Some(value));
            }
        }
        head
    }

    /// `grpc-status`, when present and a number.
    fn grpc_status(&self) -> Option<u32> {
        grpc_status_code(self.grpc_status?)
    }

    /// Where the gRPC status is (as [`crate::core::grpc::grpc_status_at`] says).
    fn grpc_status_at(&self) -> GrpcStatusAt {
        match (self.grpc, self.grpc_status) {
            (false, _) => GrpcStatusAt::NotGrpc,
            (true, Some(_)) => GrpcStatusAt::Headers(self.grpc_status()),
            (true, None) => GrpcStatusAt::Trailers,
        }
    }
}

/// A header's value as text, when it is set and visible ASCII.
fn header_str(value: &Option<HeaderValue>) -> Option<&str> {
    value.as_ref().and_then(|v| v.to_str().ok())
}

impl RequestTrace {
    /// Names the caller's SPIFFE identity (when it has one) on the span
    /// (`remora.peer.identity`) and in the access log line. A reference count, no more.
    pub fn with_peer_identity(mut self, identity: Option<&Arc<str>>) -> Self {
        let Some(identity) = identity else {
            return self;
        };
        if let Some(span) = &self.call.0.span {
            span.record(|recording| recording.attributes.str(PEER_IDENTITY, identity));
        }
        self.peer_identity = Some(identity.clone());
        self
    }

    /// Names the caller's address (as its connection wrote it once, see
    /// [`Tracing::logs_access`]) in the access log line. A reference count, no more.
    pub fn with_client(mut self, client: Option<&Arc<str>>) -> Self {
        self.client = client.cloned();
        self
    }

    /// The request span's context: made current around the call's future (with
    /// `opentelemetry::context::FutureExt::with_context`) so that [`event`] lands on the
    /// span, before [`finish`](Self::finish). Not a method taking the future: each layer
    /// of futures would copy the whole call's state once more.
    pub fn context(&self) -> opentelemetry::Context {
        self.call.0.cx.clone()
    }

    /// Records the answer on the span, ends it and returns the response with
    /// `x-request-id` set, and what waits for its body's end: the access log line (its
    /// byte count and `duration_ms` run to the end), and the span of a gRPC answer whose
    /// status comes in its trailers. The caller settles it at the end of the body
    /// (`MeteredBody::waited`).
    pub fn finish(
        self,
        mut response: Response<ProxyBody>,
    ) -> (Response<ProxyBody>, Option<Box<trailers::AnswerEnd>>) {
        let head = AnswerHead::of(response.headers());
        let call = &self.call.0;
        let status = response.status().as_u16();
        let grpc_status = head.grpc_status();
        let endpoint = response.extensions().get::<EndpointUsed>().map(|e| e.0);
        let observed = call.span.is_some() || call.tracing.0.access_log;
        let waits_for_trailers =
            observed && grpc_status.is_none() && head.grpc_status_at() == GrpcStatusAt::Trailers;
        // Owned (the headers' values are reference-counted): the request id goes in next.
        let answer = observed.then(|| Answer::of(&response, &head));
        if !head.request_id {
            response
                .headers_mut()
                .insert(&REQUEST_ID, self.request_id.clone());
        }
        if let Some(span) = &call.span {
            // One record: the answer's head now; its outcome too unless trailers bring it.
            span.record(|recording| {
                let attributes = &mut recording.attributes;
                attributes.int("http.response.status_code", i64::from(status));
                if let Some(endpoint) = endpoint {
                    attributes.socket_addr("remora.endpoint", endpoint);
                }
                if waits_for_trailers {
                    return;
                }
                if let Some(code) = grpc_status {
                    attributes.int("rpc.grpc.status_code", i64::from(code));
                }
                let reason = answer
                    .as_ref()
                    .and_then(|a| a.reason.as_ref())
                    .map(header_text);
                if let Some(error) = error_status(status, grpc_status, call.direction, reason) {
                    recording.set_status(error);
                }
            });
        }
        let Some(answer) = answer else {
            return (response, None);
        };
        if !waits_for_trailers {
            if let Some(span) = &call.span {
                span.end();
            }
            if !call.tracing.0.access_log {
                return (response, None);
            }
        }
        let end = trailers::AnswerEnd {
            trace: self,
            answer,
            grpc_status,
            span_waits: waits_for_trailers,
        };
        (response, Some(Box::new(end)))
    }

    /// Writes the call's access log line; `response_bytes` were sent back.
    pub(super) fn access_log(
        &self,
        answer: &Answer,
        grpc_status: Option<u32>,
        response_bytes: u64,
    ) {
        let call = &self.call.0;
        let span = call.cx.span();
        let context = span.span_context();
        let host = header_str(&self.host).or_else(|| self.uri.authority().map(|a| a.as_str()));
        crate::access::log(&crate::access::Entry {
            trace_id: context.trace_id().to_bytes(),
            span_id: context.span_id().to_bytes(),
            request_id: self.request_id.as_bytes(),
            direction: call.direction.as_str(),
            service: call.service.get().map_or("unknown", |s| &**s),
            method: &self.method,
            path: self.uri.path(),
            host,
            client: self.client.as_deref(),
            request_bytes: call.request_bytes.load(Ordering::Relaxed),
            response_bytes,
            attempts: call.attempts.load(Ordering::Relaxed),
            upstream_time: answer.endpoint.map(|e| e.1),
            reason: header_str(&answer.reason),
            fallback: header_str(&answer.fallback),
            status: answer.status,
            grpc_status,
            // The clock itself at the end (one read per logged call): a call served
            // within one poll would otherwise log 0 ms.
            duration: self.started.elapsed(),
            upstream: answer.endpoint.map(|e| e.0),
            peer_identity: self.peer_identity.as_deref(),
        });
    }
}
