//! OTLP export toward real backends, through a real OTLP receiver: headers (a hosted
//! backend's API key), gzip, resource attributes, retries of a collector that is not
//! ready yet, and the OpenTelemetry SDK's environment variables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{self, otlp_receiver};

const WAIT: Duration = Duration::from_secs(10);

/// A sidecar with service `svc` (dedicated port) in front of `upstream`, its `tracing`
/// section as given (flow style, without braces).
async fn traced(upstream: SocketAddr, tracing: &str) -> remora::Sidecar {
    support::sidecar(&format!(
        "service: checkout\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n\
         tracing: {{ batch_delay: 50ms, {tracing} }}\n"
    ))
    .await
}

async fn call(sidecar: &remora::Sidecar) {
    let url = format!("http://{}/", sidecar.addrs().service("svc").unwrap());
    let (status, _, _) = support::get(&url).await;
    assert_eq!(status, 200);
}

fn is_uuid(text: &str) -> bool {
    text.len() == 36 && text.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test]
async fn grpc_exports_carry_headers_gzip_and_resource_attributes() {
    let (collector, received) = otlp_receiver::grpc().await;
    let (upstream, _) = support::recording("up").await;
    let sidecar = traced(
        upstream,
        &format!(
            "endpoint: 'http://{collector}', compression: gzip, \
             headers: {{ x-api-key: s3cret }}, \
             resource: {{ deployment.environment.name: test }}"
        ),
    )
    .await;
    call(&sidecar).await;
    let spans = received.wait_for(1, WAIT).await;
    assert!(!spans.is_empty(), "no span arrived");
    let resource = &spans[0].resource;
    assert_eq!(resource["service.name"], "checkout");
    assert_eq!(resource["deployment.environment.name"], "test");
    assert!(
        is_uuid(&resource["service.instance.id"]),
        "{:?}",
        resource.get("service.instance.id")
    );
    let heads = received.heads();
    assert_eq!(heads[0]["x-api-key"], "s3cret");
    assert_eq!(
        heads[0]["grpc-encoding"], "gzip",
        "the export was compressed"
    );
    // /config shows the header's name, not its value.
    let admin = sidecar.addrs().admin.unwrap();
    let (_, _, config) = support::get(&format!("http://{admin}/config")).await;
    assert!(config.contains("x-api-key"), "{config}");
    assert!(!config.contains("s3cret"), "{config}");
}

#[tokio::test]
async fn http_exports_carry_headers_and_gzip_bodies() {
    let (collector, received) = otlp_receiver::http().await;
    let (upstream, _) = support::recording("up").await;
    let sidecar = traced(
        upstream,
        &format!(
            "endpoint: 'http://{collector}', protocol: http, compression: gzip, \
             headers: {{ authorization: Bearer t0k }}"
        ),
    )
    .await;
    call(&sidecar).await;
    let spans = received.wait_for(1, WAIT).await;
    assert!(
        !spans.is_empty(),
        "no span arrived (the body decodes once unzipped)"
    );
    let heads = received.heads();
    assert_eq!(heads[0]["authorization"], "Bearer t0k");
    assert_eq!(heads[0]["content-encoding"], "gzip");
    drop(sidecar);
}

/// A collector that is starting (UNAVAILABLE twice) gets the batch on the third try.
#[tokio::test]
async fn a_batch_the_collector_refuses_for_now_is_tried_again() {
    let (collector, received) = otlp_receiver::grpc_flaky(2).await;
    let (upstream, _) = support::recording("up").await;
    let sidecar = traced(upstream, &format!("endpoint: 'http://{collector}'")).await;
    call(&sidecar).await;
    let spans = received.wait_for(1, WAIT).await;
    assert_eq!(spans.len(), 1, "the span arrived after the refusals");
    let admin = sidecar.addrs().admin.unwrap();
    assert_eq!(
        support::metric(admin, "remora_span_export_retries_total").await,
        2.0
    );
    assert_eq!(
        support::metric(admin, "remora_spans_dropped_total").await,
        0.0
    );
    assert_eq!(
        support::metric(admin, "remora_spans_exported_total").await,
        1.0
    );
}

/// The OpenTelemetry SDK's variables configure a sidecar whose file says nothing of
/// tracing: where to export, how, with which headers, under which service name.
#[tokio::test]
async fn the_otel_environment_variables_configure_the_export() {
    let (collector, received) = otlp_receiver::http().await;
    let (upstream, _) = support::recording("up").await;
    let env: HashMap<&str, String> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20t0k".into(),
        ),
        ("OTEL_SERVICE_NAME", "env-named".into()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "team=core,service.instance.id=i-7".into(),
        ),
    ]
    .into_iter()
    .collect();
    let yaml = format!(
        "service: checkout\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n"
    );
    let lookup = |name: &str| env.get(name).cloned();
    let config = remora::build::parse_with_env("test.yaml", &yaml, &lookup).unwrap();
    let sidecar = remora::Sidecar::start(config).await.unwrap();
    call(&sidecar).await;
    let spans = received.wait_for(1, WAIT).await;
    assert!(
        !spans.is_empty(),
        "no span arrived at the collector the environment names"
    );
    assert_eq!(spans[0].service, "env-named");
    assert_eq!(spans[0].resource["team"], "core");
    assert_eq!(spans[0].resource["service.instance.id"], "i-7");
    assert_eq!(received.heads()[0]["authorization"], "Bearer t0k");
}

#[test]
fn an_unreadable_otel_variable_is_a_config_error_naming_it() {
    let env: HashMap<&str, &str> = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]
        .into_iter()
        .collect();
    let lookup = |name: &str| env.get(name).map(|v| v.to_string());
    let error = remora::build::parse_with_env(
        "test.yaml",
        "service: a\nservices:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [127.0.0.1:9]\n",
        &lookup,
    )
    .expect_err("refused");
    let text = error.to_string();
    assert!(text.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{text}");
    assert!(text.contains("http/json"), "{text}");
}

#[test]
fn export_headers_remora_sets_itself_are_refused() {
    let error = remora::build::parse(
        "test.yaml",
        "service: a\nservices:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [127.0.0.1:9]\n\
         tracing: { endpoint: 'http://127.0.0.1:4317', headers: { content-type: text/plain } }\n",
    )
    .expect_err("refused");
    let text = error.to_string();
    assert!(text.contains("tracing.headers.content-type"), "{text}");
}
