//! An OTLP/gRPC trace collector that decodes and counts spans, then forgets them: the
//! benchmark's stand-in for Jaeger when it measures remora with tracing on.
//!
//! `otlp_sink PORT` listens on `127.0.0.1:PORT` and prints the span count every 10 s.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// Counts the spans of every export.
#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = match std::env::args().nth(1).and_then(|p| p.parse().ok()) {
        Some(port) => port,
        None => {
            eprintln!("otlp_sink: usage: otlp_sink PORT");
            std::process::exit(2);
        }
    };
    let sink = Sink::default();
    let spans = sink.spans.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            println!("spans received: {}", spans.load(Ordering::Relaxed));
        }
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if let Err(error) = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink))
        .serve(addr)
        .await
    {
        eprintln!("otlp_sink: {error}");
        std::process::exit(1);
    }
}
