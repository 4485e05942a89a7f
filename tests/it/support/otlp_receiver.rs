//! An OTLP trace collector for tests: OTLP/gRPC (the collector's `TraceService`, served
//! by tonic) and OTLP/HTTP protobuf (`POST /v1/traces`), both decoding the real protobuf
//! into [`ReceivedSpan`]s; each also behind TLS ([`grpc_tls`], [`http_tls`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// One span as the collector received it, ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: SpanKind,
    /// Attribute values rendered as text.
    pub attributes: HashMap<String, String>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub events: Vec<String>,
    /// The resource's attributes, `service.name` included.
    pub resource: HashMap<String, String>,
}

impl ReceivedSpan {
    /// An attribute's value, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// Everything received so far: the spans, and the headers of each export request.
#[derive(Debug, Clone, Default)]
pub struct Received(
    Arc<Mutex<Vec<ReceivedSpan>>>,
    Arc<Mutex<Vec<http::HeaderMap>>>,
);

impl Received {
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.0.lock().unwrap().clone()
    }

    /// The headers (gRPC metadata) of every export request so far.
    pub fn heads(&self) -> Vec<http::HeaderMap> {
        self.1.lock().unwrap().clone()
    }

    fn head(&self, headers: http::HeaderMap) {
        self.1.lock().unwrap().push(headers);
    }

    /// Waits until at least `count` spans arrived (or `limit` passed) and returns them.
    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.0.lock().unwrap().len() < count && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.spans()
    }

    fn collect(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name.clone(),
                        kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                        attributes: attributes(&span.attributes),
                        status_code: span.status.as_ref().map_or(0, |s| s.code),
                        events: span.events.iter().map(|e| e.name.clone()).collect(),
                        resource: resource.clone(),
                    });
                }
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.head(request.metadata().clone().into_headers());
        self.0.collect(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC collector on an ephemeral port (it takes gzip-compressed exports).
pub async fn grpc() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, grpc_on(listener))
}

/// An OTLP/gRPC collector on `listener` (it takes gzip-compressed exports).
pub fn grpc_on(listener: TcpListener) -> Received {
    let received = Received::default();
    let service = TraceServiceServer::new(Collector(received.clone()))
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    received
}

/// An OTLP/gRPC collector over TLS (`tls` offers ALPN `h2`) on an ephemeral port.
pub async fn grpc_tls(tls: Arc<rustls::ServerConfig>) -> (SocketAddr, Received) {
    let received = Received::default();
    let service = TraceServiceServer::new(Collector(received.clone()));
    let service = hyper_util::service::TowerToHyperService::new(service);
    (serve_tls(tls, service).await, received)
}

/// An OTLP/HTTP protobuf collector over TLS on an ephemeral port.
pub async fn http_tls(tls: Arc<rustls::ServerConfig>) -> (SocketAddr, Received) {
    let received = Received::default();
    let sink = received.clone();
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let sink = sink.clone();
            async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                sink.collect(request);
                let reply = ExportTraceServiceResponse {
                    partial_success: None,
                };
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/x-protobuf")
                        .body(crate::support::full(reply.encode_to_vec()))
                        .unwrap(),
                )
            }
        });
    (serve_tls(tls, service).await, received)
}

/// Serves `service` (HTTP/1.1 or HTTP/2) over TLS with `tls` on an ephemeral port.
async fn serve_tls<S, B>(tls: Arc<rustls::ServerConfig>, service: S) -> SocketAddr
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, service) = (acceptor.clone(), service.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    addr
}

/// An OTLP/gRPC collector that refuses its first `refusals` exports with `UNAVAILABLE`
/// and takes the rest.
pub async fn grpc_flaky(refusals: usize) -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(refusals));
    let service = TraceServiceServer::new(Flaky(Collector(received.clone()), left));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, received)
}

struct Flaky(Collector, Arc<std::sync::atomic::AtomicUsize>);

#[tonic::async_trait]
impl TraceService for Flaky {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        use std::sync::atomic::Ordering;
        let refuse = self
            .1
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            return Err(tonic::Status::unavailable("starting"));
        }
        self.0.export(request).await
    }
}

/// An OTLP/gRPC collector that refuses every export with `UNAVAILABLE`, counting the
/// calls it refused.
pub async fn grpc_refusing() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let service = TraceServiceServer::new(Refusing(refused.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, refused)
}

struct Refusing(Arc<std::sync::atomic::AtomicUsize>);

#[tonic::async_trait]
impl TraceService for Refusing {
    async fn export(
        &self,
        _request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(tonic::Status::unavailable("overloaded"))
    }
}

/// An OTLP/HTTP protobuf collector (`POST /v1/traces`) on an ephemeral port (it takes
/// gzip bodies).
pub async fn http() -> (SocketAddr, Received) {
    let received = Received::default();
    let sink = received.clone();
    let addr = crate::support::serve(move |request: http::Request<hyper::body::Incoming>| {
        let sink = sink.clone();
        async move {
            let path = request.uri().path().to_string();
            let (head, body) = request.into_parts();
            sink.head(head.headers.clone());
            let mut body = body.collect().await.unwrap().to_bytes();
            if head
                .headers
                .get("content-encoding")
                .is_some_and(|v| v == "gzip")
            {
                let mut plain = Vec::new();
                let mut gzip = flate2::read::GzDecoder::new(&body[..]);
                std::io::Read::read_to_end(&mut gzip, &mut plain).unwrap();
                body = plain.into();
            }
            if path != "/v1/traces" {
                return http::Response::builder()
                    .status(404)
                    .body(crate::support::full(""))
                    .unwrap();
            }
            match ExportTraceServiceRequest::decode(body) {
                Ok(request) => {
                    sink.collect(request);
                    let reply = ExportTraceServiceResponse {
                        partial_success: None,
                    };
                    http::Response::builder()
                        .header("content-type", "application/x-protobuf")
                        .body(crate::support::full(reply.encode_to_vec()))
                        .unwrap()
                }
                Err(_) => http::Response::builder()
                    .status(400)
                    .body(crate::support::full(""))
                    .unwrap(),
            }
        }
    })
    .await;
    (addr, received)
}

/// A collector that accepts connections and reads whatever arrives but never answers,
/// as a hung collector does; the first bytes of each connection are announced on the
/// returned receiver. Connections stay open as long as the test runs.
pub async fn unresponsive() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (announce, arrivals) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let announce = announce.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut announced = false;
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                    if n == 0 {
                        return;
                    }
                    if !announced {
                        announced = true;
                        let _ = announce.send(());
                    }
                }
            });
        }
    });
    (addr, arrivals)
}
