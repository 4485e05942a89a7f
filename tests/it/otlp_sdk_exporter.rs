//! The measurement variant of span export (feature `otlp-sdk-exporter`, chosen with
//! `REMORA_OTLP_EXPORTER=sdk`): remora's spans reach a real OTLP/gRPC receiver through
//! opentelemetry-otlp's exporter, attributes and all. Built and run only with
//! `--features otlp-sdk-exporter`.

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::support::{self, otlp_receiver};

#[tokio::test]
async fn spans_reach_the_collector_through_opentelemetry_otlp() {
    let (collector, received) = otlp_receiver::grpc().await;
    let (upstream, _) = support::recording("up").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("remora.yaml");
    let admin = support::free_port();
    let port = support::free_port();
    std::fs::write(
        &config,
        format!(
            "service: checkout\n\
             admin: {{ listen: 127.0.0.1:{admin} }}\n\
             tracing: {{ endpoint: 'http://{collector}', batch_delay: 50ms, \
             resource: {{ team: core }} }}\n\
             services:\n  svc:\n    listen: 127.0.0.1:{port}\n    endpoints: [{upstream}]\n"
        ),
    )
    .unwrap();
    let admin = format!("127.0.0.1:{admin}").parse().unwrap();
    let remora =
        support::Process::run_with_env(&config, admin, &[("REMORA_OTLP_EXPORTER", "sdk")]).await;

    let (status, _, _) = support::get(&format!("http://127.0.0.1:{port}/orders/7")).await;
    assert_eq!(status, 200);
    let spans = received.wait_for(1, Duration::from_secs(10)).await;
    let [span] = &spans[..] else {
        panic!("one span expected: {spans:#?}\n{}", remora.log())
    };
    // The SDK's resource detector names the SDK: the spans came through its exporter.
    assert_eq!(span.resource["telemetry.sdk.name"], "opentelemetry");
    assert_eq!(span.service, "checkout");
    assert_eq!(span.resource["team"], "core");
    assert_eq!(span.name, "GET");
    assert_eq!(span.kind, SpanKind::Client);
    assert_eq!(span.trace_id.len(), 32);
    assert_eq!(span.attr("http.request.method"), Some("GET"));
    assert_eq!(span.attr("url.path"), Some("/orders/7"));
    assert_eq!(span.attr("http.response.status_code"), Some("200"));
    assert_eq!(span.attr("remora.direction"), Some("outbound"));
    assert_eq!(span.attr("remora.service"), Some("svc"));
    assert!(
        remora.log().contains("REMORA_OTLP_EXPORTER=sdk"),
        "{}",
        remora.log()
    );
    assert_eq!(
        support::metric(admin, "remora_spans_exported_total").await,
        1.0
    );
}
