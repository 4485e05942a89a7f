//! An OTLP/gRPC trace collector that counts spans and forgets them: the benchmark's
//! stand-in for Jaeger when it measures remora with tracing on.
//!
//! `otlp_sink PORT` listens on `127.0.0.1:PORT` and prints the span count every 10 s.
//!
//! It must cost far less than the proxy it serves, since the benchmark runs it on the
//! load generator's core: a plain hyper HTTP/2 server (h2c, prior knowledge, as tonic
//! clients speak it) on one thread, no tonic service stack, and a decode that keeps only
//! the path to the spans (`ExportTraceServiceRequest.resource_spans` →
//! `ResourceSpans.scope_spans` → `ScopeSpans.spans`). Every other field is skipped
//! without being parsed, and each span stays an undecoded slice of the request body, so
//! an export costs a few small allocations however many attributes its spans carry.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::combinators::WithTrailers;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::net::TcpListener;

/// The one method this collector serves.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`, reduced to the
/// field that leads to the spans.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

/// `opentelemetry.proto.trace.v1.ResourceSpans` without its resource and schema URL.
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

/// `opentelemetry.proto.trace.v1.ScopeSpans` without its scope and schema URL; each span
/// is left encoded, a slice of the request body (no copy).
#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<Bytes>,
}

/// A response body: one optional DATA frame, then the gRPC status trailers.
type GrpcBody = WithTrailers<Full<Bytes>, Ready<Option<Result<HeaderMap, Infallible>>>>;

/// The framed, empty `ExportTraceServiceResponse`: not compressed, length 0.
const EMPTY_RESPONSE: &[u8] = &[0, 0, 0, 0, 0];

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = match std::env::args().nth(1).and_then(|p| p.parse().ok()) {
        Some(port) => port,
        None => {
            eprintln!("otlp_sink: usage: otlp_sink PORT");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("otlp_sink: bind 127.0.0.1:{port}: {error}");
            std::process::exit(1);
        }
    };
    let spans = Arc::new(AtomicU64::new(0));
    let reported = spans.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            println!("spans received: {}", reported.load(Ordering::Relaxed));
        }
    });

    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // Large windows and frames: an export is one request of up to a few hundred KiB,
    // better received in a few frames without waiting for window updates.
    builder
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .max_frame_size(256 << 10);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors: wait for some to close.
                eprintln!("otlp_sink: accept: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let spans = spans.clone();
        let service = hyper::service::service_fn(move |request| export(request, spans.clone()));
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

/// Answers one call: counts the spans of an export, refuses anything else.
async fn export(
    request: Request<Incoming>,
    spans: Arc<AtomicU64>,
) -> Result<Response<GrpcBody>, Infallible> {
    if request.uri().path() != EXPORT_PATH {
        return Ok(reply(12, Some("otlp_sink serves only TraceService/Export")));
    }
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(reply(1, Some("request body not received"))),
    };
    match count_spans(body) {
        Ok(count) => {
            spans.fetch_add(count, Ordering::Relaxed);
            Ok(reply(0, None))
        }
        Err(message) => Ok(reply(3, Some(message))),
    }
}

/// The spans in a gRPC request body: each length-prefixed message in it (one, for a
/// unary call) decoded just far enough to count them.
fn count_spans(mut body: Bytes) -> Result<u64, &'static str> {
    let mut count = 0u64;
    while body.has_remaining() {
        if body.remaining() < 5 {
            return Err("truncated gRPC frame prefix");
        }
        let compressed = body.get_u8();
        let length = body.get_u32() as usize;
        if compressed != 0 {
            return Err("compressed messages are not supported");
        }
        if body.remaining() < length {
            return Err("truncated gRPC message");
        }
        let message = body.split_to(length);
        let request = ExportTraceServiceRequest::decode(message)
            .map_err(|_| "malformed ExportTraceServiceRequest")?;
        count += request
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len() as u64)
            .sum::<u64>();
    }
    Ok(count)
}

/// A `200 application/grpc` response with `grpc-status: status` in its trailers; on
/// success the body is an empty `ExportTraceServiceResponse`.
fn reply(status: u16, message: Option<&'static str>) -> Response<GrpcBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if let Some(message) = message {
        trailers.insert("grpc-message", HeaderValue::from_static(message));
    }
    let data = if status == 0 {
        Bytes::from_static(EMPTY_RESPONSE)
    } else {
        Bytes::new()
    };
    let body = Full::new(data).with_trailers(ready(Some(Ok(trailers))));
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}
