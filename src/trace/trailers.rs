//! The tracing side of a response body's end: a gRPC status that arrives in trailers,
//! and the access log line.
//!
//! The attempt span ([`Attempt::end`](super::Attempt::end)) cannot record a gRPC status
//! the headers lack: it waits in the response body (see [`crate::core::body::watch`])
//! and records it when the body ends. So do the request span and the access log line
//! ([`RequestTrace::finish`](super::RequestTrace::finish) hands back an [`AnswerEnd`],
//! which waits in the body the caller gets). Only gRPC responses whose headers carry no
//! `grpc-status` make spans wait (see [`grpc_status_at`]); the access log line of every
//! answer waits, for the bytes the body sent, as nginx's and Envoy's do.

use std::sync::Arc;

use opentelemetry::trace::Status;

use super::span::{LiveSpan, Recording};
use super::{error_status, header_text, Answer, RequestTrace};
use crate::core::body::{BodyEnd, EndWaiter, StatusWaiter};
use crate::core::labels::Direction;

/// An attempt span whose response status arrives in trailers.
#[derive(Debug)]
pub struct AttemptWaiting {
    pub(super) span: Arc<LiveSpan>,
    /// The HTTP status of the response (already on the span).
    pub(super) status: u16,
}

/// What the request's trace still records when the answer's body ends: its span, when
/// the gRPC status comes in trailers, and its access log line, which says the bytes sent
/// and the time to the end. It waits inline in the body the caller gets
/// ([`MeteredBody`](crate::core::body::MeteredBody)), not boxed.
#[derive(Debug)]
pub struct AnswerEnd {
    pub(super) trace: RequestTrace,
    /// The answer's head (its HTTP status is on the span already).
    pub(super) answer: Answer,
    /// The gRPC status its head carried.
    pub(super) grpc_status: Option<u32>,
    /// Whether the span is still open, for the status the trailers bring.
    pub(super) span_waits: bool,
}

impl StatusWaiter for AttemptWaiting {
    fn settle(self: Box<Self>, end: BodyEnd<'_>, _sent: u64) {
        let Self { span, status } = *self;
        span.record(|recording| {
            record_end(recording, status, Direction::Outbound, None, end);
        });
        span.end();
    }
}

impl EndWaiter for AnswerEnd {
    fn settle(self, end: BodyEnd<'_>, sent: u64) {
        let Self {
            trace,
            answer,
            grpc_status,
            span_waits,
        } = self;
        let call = &trace.call.0;
        if let (true, Some(span)) = (span_waits, &call.span) {
            span.record(|recording| {
                let reason = answer.reason.as_ref().map(header_text);
                record_end(recording, answer.status, call.direction, reason, end);
            });
            span.end();
        }
        if call.tracing.0.access_log {
            trace.access_log(&answer, grpc_status.or(end.grpc_status()), sent);
        }
    }
}

/// Records on a recording span how its response ended (the HTTP status is on it already).
fn record_end(
    recording: &mut Recording,
    status: u16,
    direction: Direction,
    reason: Option<std::borrow::Cow<'_, str>>,
    end: BodyEnd<'_>,
) {
    match end {
        BodyEnd::Ended(code) => {
            if let Some(code) = code {
                recording
                    .attributes
                    .int("rpc.grpc.status_code", i64::from(code));
            }
            if let Some(error) = error_status(status, code, direction, reason) {
                recording.set_status(error);
            }
        }
        BodyEnd::Failed(error) => {
            recording.attributes.str("error.type", "response-body");
            recording.set_status(Status::error(format!("response body: {error}")));
        }
        BodyEnd::Dropped => recording.attributes.str("error.type", "cancelled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::body::{watch, ProxyBody};
    use crate::core::grpc::{grpc_status_at, GrpcStatusAt};
    use http::header::HeaderValue;
    use http::{HeaderMap, Response};
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
        let (first, first_ended) = super::super::span::test_span();
        watch(
            &mut response,
            Box::new(AttemptWaiting {
                span: first,
                status: 200,
            }),
        );
        let (second, second_ended) = super::super::span::test_span();
        watch(
            &mut response,
            Box::new(AttemptWaiting {
                span: second,
                status: 200,
            }),
        );
        let ProxyBody::Watched { body } = response.body() else {
            panic!("not watched");
        };
        assert_eq!(body.waiting(), 2);
        assert!(
            first_ended.take().is_empty() && second_ended.take().is_empty(),
            "the attempts wait for the trailers"
        );
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "7");
        assert_eq!(collected.to_bytes(), "message");
        for ended in [first_ended, second_ended] {
            let [span] = &ended.take()[..] else {
                panic!("the attempt span ended at the trailers");
            };
            assert_eq!(
                span.recording.status,
                opentelemetry::trace::Status::error("gRPC status 7")
            );
        }
    }

    #[test]
    fn an_ended_body_is_not_wrapped() {
        let mut response = grpc_response(ProxyBody::empty());
        let (span, ended) = super::super::span::test_span();
        let attempt = AttemptWaiting { span, status: 200 };
        watch(&mut response, Box::new(attempt));
        assert!(matches!(response.body(), ProxyBody::Full { .. }));
        assert_eq!(ended.take().len(), 1, "settled at once");
    }
}
