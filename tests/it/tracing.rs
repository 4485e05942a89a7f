//! Tracing through real sockets: one trace across two sidecars exported over OTLP to a
//! collector that decodes the protobuf, B3 and Jaeger callers continued in W3C, sampling
//! off still propagating, a dead or hung collector costing nothing but dropped spans,
//! the request id, and export to a collector over TLS (gRPC and HTTP, with a client
//! certificate).
//!
//! Per-request cost is measured by `bench/overhead.sh`, not here.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use remora::trace::{AttemptSpans, CollectorTls, OtlpProtocol, Propagation, TracingConfig};

use crate::support;
use crate::support::log_lines::LogLines;
use crate::support::otlp_receiver::{self, ReceivedSpan};

const WAIT: Duration = Duration::from_secs(5);

fn exporting(service: &str, collector: SocketAddr) -> TracingConfig {
    TracingConfig {
        endpoint: Some(format!("http://{collector}")),
        service_name: service.into(),
        batch_delay: Duration::from_millis(50),
        export_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// `config` with a span for every try, retried or not.
fn every_try(config: TracingConfig) -> TracingConfig {
    TracingConfig {
        attempt_spans: AttemptSpans::Always,
        ..config
    }
}

async fn start(yaml: &str, tracing: TracingConfig) -> remora::Sidecar {
    let config = remora::build::parse("test.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
    remora::Sidecar::start_with(config, tracing).await.unwrap()
}

/// A sidecar with a dedicated outbound port for service `svc` at `upstream`.
async fn outbound(upstream: SocketAddr, tracing: TracingConfig) -> remora::Sidecar {
    start(
        &format!(
            "admin: {{ listen: 127.0.0.1:0 }}\n\
             services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n"
        ),
        tracing,
    )
    .await
}

/// A sidecar whose inbound listener forwards to `app`.
async fn inbound(app: SocketAddr, tracing: TracingConfig) -> remora::Sidecar {
    start(
        &format!(
            "admin: {{ listen: 127.0.0.1:0 }}\n\
             inbound: {{ listen: 127.0.0.1:0, app: {app} }}\n"
        ),
        tracing,
    )
    .await
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> (http::StatusCode, http::HeaderMap) {
    let mut request = http::Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(http_body_util::Full::default()).unwrap();
    let response = support::http1_client().request(request).await.unwrap();
    (response.status(), response.headers().clone())
}

fn service_url(sidecar: &remora::Sidecar, path: &str) -> String {
    format!("http://{}{path}", sidecar.addrs().service("svc").unwrap())
}

fn header(seen: &support::Seen, name: &str) -> String {
    seen.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// `traceparent` = `00-{trace}-{parent}-{flags}`.
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn find<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    name_or_kind: SpanKind,
    attempt: bool,
) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| {
            s.service == service && s.kind == name_or_kind && (s.name == "attempt") == attempt
        })
        .unwrap_or_else(|| {
            panic!("no {service} {name_or_kind:?} span (attempt: {attempt}) in {spans:#?}")
        })
}

#[tokio::test]
async fn one_trace_across_two_sidecars_with_a_span_per_try() {
    let (collector, received) = otlp_receiver::grpc().await;
    let (app_b, seen_by_b) = support::recording("b").await;
    let sidecar_b = inbound(app_b, every_try(exporting("b", collector))).await;
    let sidecar_a = outbound(
        sidecar_b.addrs().inbound.unwrap(),
        every_try(exporting("a", collector)),
    )
    .await;

    let (status, headers) = get_with(&service_url(&sidecar_a, "/orders/7"), &[]).await;
    assert_eq!(status, 200);
    sidecar_a.handle().tracing().flush().await;
    sidecar_b.handle().tracing().flush().await;
    let spans = received.wait_for(4, WAIT).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");

    let a_call = find(&spans, "a", SpanKind::Client, false);
    let a_try = find(&spans, "a", SpanKind::Client, true);
    let b_server = find(&spans, "b", SpanKind::Server, false);
    let b_try = find(&spans, "b", SpanKind::Client, true);
    assert!(
        spans.iter().all(|s| s.trace_id == a_call.trace_id),
        "{spans:#?}"
    );
    assert_eq!(
        a_call.parent_span_id, "",
        "app A sent no context: a new trace"
    );
    assert_eq!(a_try.parent_span_id, a_call.span_id);
    assert_eq!(b_server.parent_span_id, a_try.span_id);
    assert_eq!(b_try.parent_span_id, b_server.span_id);

    // What app B saw: the attempt span of sidecar B as its parent, sampled.
    let seen = &seen_by_b.all()[0];
    let (trace, parent, flags) = traceparent(&header(seen, "traceparent"));
    assert_eq!(
        (trace.as_str(), parent.as_str(), flags.as_str()),
        (a_call.trace_id.as_str(), b_try.span_id.as_str(), "01")
    );

    // Attributes per the semantic conventions, plus remora's own.
    assert_eq!(a_call.name, "GET");
    assert_eq!(a_call.attr("http.request.method"), Some("GET"));
    assert_eq!(a_call.attr("url.path"), Some("/orders/7"));
    assert_eq!(a_call.attr("http.response.status_code"), Some("200"));
    assert_eq!(a_call.attr("network.protocol.version"), Some("1.1"));
    assert_eq!(a_call.attr("remora.direction"), Some("outbound"));
    assert_eq!(a_call.attr("remora.service"), Some("svc"));
    let b_addr = sidecar_b.addrs().inbound.unwrap().to_string();
    assert_eq!(a_call.attr("remora.endpoint"), Some(b_addr.as_str()));
    assert_eq!(a_try.attr("remora.attempt"), Some("1"));
    assert_eq!(
        a_try.attr("server.port"),
        Some(
            sidecar_b
                .addrs()
                .inbound
                .unwrap()
                .port()
                .to_string()
                .as_str()
        )
    );
    assert_eq!(b_server.attr("remora.direction"), Some("inbound"));
    assert_eq!(
        b_try.attr("remora.endpoint"),
        Some(app_b.to_string().as_str())
    );

    // The request id sidecar A made reached app B and came back to the caller.
    let request_id = header(seen, "x-request-id");
    assert_eq!(request_id.len(), 36, "{request_id:?}");
    assert_eq!(headers["x-request-id"], request_id.as_str());
    assert_eq!(b_server.attr("http.request_id"), Some(request_id.as_str()));
    sidecar_a.shutdown().await;
    sidecar_b.shutdown().await;
}

#[tokio::test]
async fn by_default_a_single_try_is_its_call_span() {
    let (collector, received) = otlp_receiver::grpc().await;
    let (app_b, seen_by_b) = support::recording("b").await;
    let sidecar_b = inbound(app_b, exporting("b", collector)).await;
    let b_addr = sidecar_b.addrs().inbound.unwrap();
    let sidecar_a = outbound(b_addr, exporting("a", collector)).await;

    let (status, _) = get_with(&service_url(&sidecar_a, "/orders/7"), &[]).await;
    assert_eq!(status, 200);
    sidecar_a.handle().tracing().flush().await;
    sidecar_b.handle().tracing().flush().await;
    let spans = received.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spans = if spans.len() == 2 {
        spans
    } else {
        received.spans()
    };
    assert_eq!(
        spans.len(),
        2,
        "a call span per sidecar, no try spans: {spans:#?}"
    );
    let a_call = find(&spans, "a", SpanKind::Client, false);
    let b_server = find(&spans, "b", SpanKind::Server, false);
    assert_eq!(b_server.trace_id, a_call.trace_id);
    assert_eq!(b_server.parent_span_id, a_call.span_id);
    assert_eq!(
        a_call.attr("remora.endpoint"),
        Some(b_addr.to_string().as_str())
    );
    assert_eq!(a_call.attr("http.response.status_code"), Some("200"));
    // App B's parent is sidecar B's server span.
    let (trace, parent, _) = traceparent(&header(&seen_by_b.all()[0], "traceparent"));
    assert_eq!(
        (trace, parent),
        (a_call.trace_id.clone(), b_server.span_id.clone())
    );
    sidecar_a.shutdown().await;
    sidecar_b.shutdown().await;
}

#[tokio::test]
async fn upstream_errors_mark_spans_as_errors() {
    let (collector, received) = otlp_receiver::http().await;
    let dead = support::free_port();
    let sidecar = outbound(
        format!("127.0.0.1:{dead}").parse().unwrap(),
        every_try(TracingConfig {
            protocol: OtlpProtocol::HttpProtobuf,
            ..exporting("a", collector)
        }),
    )
    .await;
    let (status, _) = get_with(&service_url(&sidecar, "/x"), &[]).await;
    assert_eq!(status, 502);
    sidecar.handle().tracing().flush().await;
    let spans = received.wait_for(2, WAIT).await;
    let call = find(&spans, "a", SpanKind::Client, false);
    let attempt = find(&spans, "a", SpanKind::Client, true);
    assert_eq!(call.status_code, 2, "{call:#?}");
    assert_eq!(call.attr("http.response.status_code"), Some("502"));
    assert_eq!(attempt.status_code, 2, "{attempt:#?}");
    assert_eq!(attempt.attr("error.type"), Some("connect-failure"));
}

#[tokio::test]
async fn b3_and_jaeger_callers_continue_their_trace() {
    let (upstream, seen) = support::recording("up").await;
    let sidecar = outbound(
        upstream,
        TracingConfig {
            propagate: vec![Propagation::W3c, Propagation::B3, Propagation::Jaeger],
            ..Default::default()
        },
    )
    .await;
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let url = service_url(&sidecar, "/");
    get_with(&url, &[("b3", &format!("{b3_trace}-e457b5a2e4d86bd1-1"))]).await;
    get_with(
        &url,
        &[
            ("x-b3-traceid", b3_trace),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ],
    )
    .await;
    let jaeger_trace = "00000000000000000000000000abcdef";
    get_with(&url, &[("uber-trace-id", "abcdef:1234:0:1")]).await;

    let all = seen.all();
    let (trace, parent, flags) = traceparent(&header(&all[0], "traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (b3_trace, "01"));
    assert_ne!(parent, "e457b5a2e4d86bd1", "the hop has its own span id");
    assert_eq!(header(&all[0], "x-b3-traceid"), b3_trace);
    assert_eq!(header(&all[0], "x-b3-spanid"), parent);
    assert!(
        all[0].headers.get("b3").is_none(),
        "the caller's stale b3 is replaced"
    );

    let (trace, _, flags) = traceparent(&header(&all[1], "traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (b3_trace, "00"));
    assert_eq!(header(&all[1], "x-b3-sampled"), "0");

    let (trace, parent, _) = traceparent(&header(&all[2], "traceparent"));
    assert_eq!(trace, jaeger_trace);
    assert_eq!(
        header(&all[2], "uber-trace-id"),
        format!("{jaeger_trace}:{parent}:0:1")
    );
}

#[tokio::test]
async fn sampling_zero_exports_nothing_but_still_propagates() {
    let (collector, received) = otlp_receiver::grpc().await;
    let (upstream, seen) = support::recording("up").await;
    let sidecar = outbound(
        upstream,
        TracingConfig {
            sampling_ratio: 0.0,
            ..exporting("a", collector)
        },
    )
    .await;
    for _ in 0..5 {
        let (status, _) = get_with(&service_url(&sidecar, "/"), &[]).await;
        assert_eq!(status, 200);
    }
    // A caller's sampled decision is followed even at ratio 0 (parent-based).
    get_with(
        &service_url(&sidecar, "/"),
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
    )
    .await;
    sidecar.handle().tracing().flush().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let all = seen.all();
    let mut traces = std::collections::HashSet::new();
    for request in &all[..5] {
        let (trace, _, flags) = traceparent(&header(request, "traceparent"));
        assert_eq!(flags, "00");
        traces.insert(trace);
    }
    assert_eq!(traces.len(), 5, "each request starts its own trace");
    let spans = received.spans();
    assert_eq!(
        spans.len(),
        1,
        "only the caller-sampled request's call span: {spans:#?}"
    );
    assert!(spans
        .iter()
        .all(|s| s.trace_id == "0af7651916cd43dd8448eb211c80319c"));
    let exported = sidecar.handle().tracing().metrics().exported.get();
    assert_eq!(exported, 1);
}

#[tokio::test]
async fn a_dead_collector_leaves_requests_alone_and_counts_dropped_spans() {
    let dead: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let (upstream, _) = support::recording("up").await;
    let sidecar = outbound(
        upstream,
        TracingConfig {
            queue_size: 4,
            batch_size: 2,
            export_timeout: Duration::from_millis(300),
            ..exporting("a", dead)
        },
    )
    .await;
    let started = Instant::now();
    for _ in 0..20 {
        let (status, _) = get_with(&service_url(&sidecar, "/"), &[]).await;
        assert_eq!(status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "requests waited on the exporter"
    );
    sidecar.handle().tracing().flush().await;
    let metrics = sidecar.handle().tracing().metrics().clone();
    assert_eq!(metrics.exported.get(), 0);
    assert_eq!(
        metrics.dropped.get(),
        20,
        "20 requests x one call span (a single try has no span of its own)"
    );

    let admin = sidecar.addrs().admin.unwrap();
    assert_eq!(
        support::metric(admin, "remora_spans_dropped_total").await,
        20.0
    );
    assert_eq!(
        support::metric(admin, "remora_spans_exported_total").await,
        0.0
    );
}

#[tokio::test]
async fn a_collector_that_never_answers_delays_no_request() {
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let (collector, mut arrivals) = otlp_receiver::unresponsive().await;
        let (upstream, _) = support::recording("up").await;
        let sidecar = outbound(
            upstream,
            TracingConfig {
                protocol,
                queue_size: 4,
                batch_size: 1,
                batch_delay: Duration::from_millis(10),
                // An export waits up to a minute for the collector's answer.
                export_timeout: Duration::from_secs(60),
                ..exporting("a", collector)
            },
        )
        .await;
        let (status, _) = get_with(&service_url(&sidecar, "/"), &[]).await;
        assert_eq!(status, 200);
        // The first call's span is being exported, and the collector will not answer.
        tokio::time::timeout(WAIT, arrivals.recv())
            .await
            .unwrap_or_else(|_| panic!("{protocol:?}: the export never reached the collector"))
            .unwrap();

        // While that export hangs, calls still complete: none waits on it (the bound is
        // generous; waiting on the export would take up to its minute).
        let url = service_url(&sidecar, "/");
        for n in 0..20 {
            let (status, _) = tokio::time::timeout(WAIT, get_with(&url, &[]))
                .await
                .unwrap_or_else(|_| panic!("{protocol:?}: call {n} waited on the exporter"));
            assert_eq!(status, 200);
        }
        // Their spans: 4 fill the queue behind the hung export, 16 are dropped.
        let admin = sidecar.addrs().admin.unwrap();
        assert!(
            support::eventually(WAIT, || async {
                support::metric(admin, "remora_spans_dropped_total").await == 16.0
            })
            .await,
            "{protocol:?}: {} spans dropped",
            support::metric(admin, "remora_spans_dropped_total").await
        );
        assert_eq!(
            support::metric(admin, "remora_spans_exported_total").await,
            0.0
        );
    }
}

#[tokio::test]
async fn spans_a_collector_refuses_are_counted_as_dropped() {
    let (collector, refused) = otlp_receiver::grpc_refusing().await;
    let (upstream, _) = support::recording("up").await;
    let sidecar = outbound(
        upstream,
        TracingConfig {
            batch_size: 2,
            // Each batch is tried again until this passes, then dropped.
            export_timeout: Duration::from_millis(300),
            ..exporting("a", collector)
        },
    )
    .await;
    for _ in 0..6 {
        let (status, _) = get_with(&service_url(&sidecar, "/"), &[]).await;
        assert_eq!(status, 200);
    }
    sidecar.handle().tracing().flush().await;
    let metrics = sidecar.handle().tracing().metrics().clone();
    assert_eq!(metrics.exported.get(), 0);
    assert_eq!(metrics.dropped.get(), 6, "six call spans, each refused");
    assert!(
        refused.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "the collector was asked in batches of two at most"
    );
}

#[tokio::test]
async fn request_ids_are_generated_or_kept_and_forwarded() {
    let (upstream, seen) = support::recording("up").await;
    let sidecar = outbound(upstream, TracingConfig::default()).await;
    let (_, generated) = get_with(&service_url(&sidecar, "/"), &[]).await;
    let (_, kept) = get_with(&service_url(&sidecar, "/"), &[("x-request-id", "abc-123")]).await;
    let all = seen.all();
    let first = header(&all[0], "x-request-id");
    assert_eq!(first.len(), 36);
    assert_eq!(generated["x-request-id"], first.as_str());
    assert_eq!(header(&all[1], "x-request-id"), "abc-123");
    assert_eq!(kept["x-request-id"], "abc-123");
    // Without an exporter the trace context still flows, sampled by default.
    let (_, _, flags) = traceparent(&header(&all[0], "traceparent"));
    assert_eq!(flags, "01");
}

#[tokio::test]
async fn a_retried_call_shows_each_attempt() {
    let (collector, received) = otlp_receiver::grpc().await;
    let (upstream, _log) = support::scripted(|n| if n < 2 { 503 } else { 200 }).await;
    let sidecar = start(
        &format!(
            "admin: {{ listen: 127.0.0.1:0 }}\n\
             policies:\n  retries:\n    again: {{ attempts: 3, retry_on: [503], backoff: {{ base: 1ms, max: 2ms, jitter: 0% }} }}\n\
             services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n    retry: again\n"
        ),
        exporting("a", collector),
    )
    .await;
    let (status, _) = get_with(&service_url(&sidecar, "/flaky"), &[]).await;
    assert_eq!(status, 200);
    sidecar.handle().tracing().flush().await;
    let spans = received.wait_for(4, WAIT).await;
    let call = find(&spans, "a", SpanKind::Client, false);
    let mut attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "attempt")
        .map(|s| {
            assert_eq!(
                s.parent_span_id, call.span_id,
                "each attempt is a child of the call"
            );
            assert_eq!(s.trace_id, call.trace_id);
            s.attr("remora.attempt").unwrap_or_default().to_string()
        })
        .collect();
    attempts.sort();
    assert_eq!(attempts, ["1", "2", "3"]);
}

/// The default (`attempt_spans: retries`) across two sidecars: every try of a retried
/// call appears once, with the spans the next sidecar made for that try under it (the
/// first try too, whose span is only made once the retry starts).
#[tokio::test]
async fn by_default_each_try_of_a_retried_call_has_its_upstream_spans_under_it() {
    let (collector, received) = otlp_receiver::grpc().await;
    let (app_b, _log) = support::scripted(|n| if n < 2 { 503 } else { 200 }).await;
    let sidecar_b = inbound(app_b, exporting("b", collector)).await;
    let sidecar_a = start(
        &format!(
            "admin: {{ listen: 127.0.0.1:0 }}\n\
             policies:\n  retries:\n    again: {{ attempts: 3, retry_on: [503], backoff: {{ base: 1ms, max: 2ms, jitter: 0% }} }}\n\
             services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{}]\n    retry: again\n",
            sidecar_b.addrs().inbound.unwrap()
        ),
        exporting("a", collector),
    )
    .await;
    let (status, _) = get_with(&service_url(&sidecar_a, "/flaky"), &[]).await;
    assert_eq!(status, 200);
    sidecar_a.handle().tracing().flush().await;
    sidecar_b.handle().tracing().flush().await;
    // a: the call and three tries; b: a server span per try.
    let spans = received.wait_for(7, WAIT).await;
    let call = find(&spans, "a", SpanKind::Client, false);
    let tries: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.service == "a" && s.name == "attempt")
        .collect();
    assert_eq!(tries.len(), 3, "{spans:#?}");
    let servers: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.service == "b" && s.kind == SpanKind::Server)
        .collect();
    assert_eq!(servers.len(), 3, "{spans:#?}");
    for attempt in &tries {
        assert_eq!(attempt.parent_span_id, call.span_id, "{attempt:#?}");
        let under: Vec<_> = servers
            .iter()
            .filter(|server| server.parent_span_id == attempt.span_id)
            .collect();
        assert_eq!(
            under.len(),
            1,
            "try {:?} has {} server spans of b under it: {spans:#?}",
            attempt.attr("remora.attempt"),
            under.len()
        );
    }
    assert!(
        servers.iter().all(|s| s.parent_span_id != call.span_id),
        "no try of b hangs off the call span directly: {spans:#?}"
    );
}

#[tokio::test]
async fn decisions_are_span_events() {
    let (collector, received) = otlp_receiver::grpc().await;
    let (upstream, _log) = support::scripted(|n| if n == 0 { 200 } else { 503 }).await;
    let sidecar = start(
        &format!(
            "admin: {{ listen: 127.0.0.1:0 }}\n\
             policies:\n  rate_limits:\n    two: {{ rate: 2/m, burst: 2 }}\n\
             \x20 fallbacks:\n    soft: {{ on: [5xx], respond: {{ status: 200, body: degraded }} }}\n\
             services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n    rate_limit: two\n    fallback: soft\n"
        ),
        exporting("a", collector),
    )
    .await;
    let url = service_url(&sidecar, "/");
    assert_eq!(get_with(&url, &[]).await.0, 200);
    assert_eq!(get_with(&url, &[]).await.0, 200, "degraded");
    assert_eq!(get_with(&url, &[]).await.0, 429);
    sidecar.handle().tracing().flush().await;
    // Three call spans; the two tries sent have no spans of their own.
    let spans = received.wait_for(3, WAIT).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let events: Vec<String> = spans
        .iter()
        .filter(|s| s.name != "attempt")
        .flat_map(|s| s.events.clone())
        .collect();
    assert!(events.iter().any(|e| e == "fallback"), "{events:?}");
    assert!(events.iter().any(|e| e == "rate-limited"), "{events:?}");
}

/// Access log lines written on this thread while it lives (`#[tokio::test]` runs the
/// sidecars' tasks on the test's thread).
/// The request span named `name` of `service` (not an attempt) and its one attempt.
fn call_and_attempt<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    name: &str,
) -> (&'a ReceivedSpan, &'a ReceivedSpan) {
    let call = spans
        .iter()
        .find(|s| s.service == service && s.name == name)
        .unwrap_or_else(|| panic!("no {service} span {name} in {spans:#?}"));
    let attempt = spans
        .iter()
        .find(|s| s.name == "attempt" && s.parent_span_id == call.span_id)
        .unwrap_or_else(|| panic!("no attempt under {call:#?}"));
    (call, attempt)
}

#[tokio::test]
async fn grpc_status_from_trailers_is_on_the_spans_and_in_the_access_log() {
    let log = LogLines::default();
    let _capture = log.capture();
    let (collector, received) = otlp_receiver::grpc().await;
    let app = support::echo::serve().await;
    let sidecar_b = inbound(app, every_try(exporting("b", collector))).await;
    let sidecar_a = outbound(
        sidecar_b.addrs().inbound.unwrap(),
        every_try(exporting("a", collector)),
    )
    .await;
    let mut client = support::echo::client(sidecar_a.addrs().service("svc").unwrap()).await;

    // OK, in the trailers of a unary reply.
    client.unary(support::echo::request("hi")).await.unwrap();
    // NOT_FOUND, in the trailers after two streamed messages.
    let ended = support::echo::stream_to_end(&mut client, "fail:2").await;
    assert_eq!(ended, (2, tonic::Code::NotFound));
    sidecar_a.handle().tracing().flush().await;
    sidecar_b.handle().tracing().flush().await;
    let spans = received.wait_for(8, WAIT).await;
    assert_eq!(spans.len(), 8, "{spans:#?}");

    let unary = "remora.echo.v1.Echo/Unary";
    for service in ["a", "b"] {
        let (call, attempt) = call_and_attempt(&spans, service, unary);
        assert_eq!(call.attr("rpc.grpc.status_code"), Some("0"), "{call:#?}");
        assert_eq!(call.attr("http.response.status_code"), Some("200"));
        assert_eq!(call.status_code, 0, "{call:#?}");
        assert_eq!(attempt.attr("rpc.grpc.status_code"), Some("0"));
        assert_eq!(attempt.status_code, 0, "{attempt:#?}");
    }

    let stream = "remora.echo.v1.Echo/ServerStream";
    let (a_call, a_try) = call_and_attempt(&spans, "a", stream);
    let (b_server, b_try) = call_and_attempt(&spans, "b", stream);
    assert_eq!(a_call.kind, SpanKind::Client);
    assert_eq!(b_server.kind, SpanKind::Server);
    for span in [a_call, a_try, b_server, b_try] {
        assert_eq!(span.attr("rpc.grpc.status_code"), Some("5"), "{span:#?}");
    }
    // NOT_FOUND fails a client's call, not a server's (it is not a server fault); every
    // attempt is a client span.
    assert_eq!(a_call.status_code, 2, "{a_call:#?}");
    assert_eq!(a_try.status_code, 2, "{a_try:#?}");
    assert_eq!(b_server.status_code, 0, "{b_server:#?}");
    assert_eq!(b_try.status_code, 2, "{b_try:#?}");

    // One line per sidecar per call, each with the status from the trailers.
    let lines = log.access(&format!("/{unary}"));
    assert_eq!(lines.len(), 2, "{}", log.text());
    assert!(
        lines.iter().all(|l| l.contains(" grpc_status=0 ")),
        "{lines:#?}"
    );
    let lines = log.access(&format!("/{stream}"));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines.iter().all(|l| l.contains(" grpc_status=5 ")),
        "{lines:#?}"
    );
    sidecar_a.shutdown().await;
    sidecar_b.shutdown().await;
}

#[tokio::test]
async fn an_abandoned_grpc_stream_still_ends_its_spans() {
    let (collector, received) = otlp_receiver::grpc().await;
    let app = support::echo::serve().await;
    let sidecar = outbound(app, every_try(exporting("a", collector))).await;
    let _open = support::echo::abandon_bidi(sidecar.addrs().service("svc").unwrap()).await;
    let ended = support::eventually(WAIT, || async {
        sidecar.handle().tracing().flush().await;
        received.spans().len() >= 2
    })
    .await;
    let spans = received.spans();
    assert!(ended, "the spans never ended: {spans:#?}");
    let (call, attempt) = call_and_attempt(&spans, "a", "remora.echo.v1.Echo/Bidi");
    assert_eq!(call.attr("error.type"), Some("cancelled"), "{call:#?}");
    assert_eq!(call.attr("rpc.grpc.status_code"), None);
    assert_eq!(call.attr("http.response.status_code"), Some("200"));
    assert_eq!(
        attempt.attr("error.type"),
        Some("cancelled"),
        "{attempt:#?}"
    );
}

#[tokio::test]
async fn spans_reach_a_collector_over_tls_by_grpc_and_by_http() {
    let pki = crate::support::pki::Pki::new();
    let upstream = support::serve(|_| async { http::Response::new(support::full("ok")) }).await;
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let (collector, received) = match protocol {
            OtlpProtocol::Grpc => otlp_receiver::grpc_tls(pki.server(&[b"h2"], true)).await,
            OtlpProtocol::HttpProtobuf => {
                otlp_receiver::http_tls(pki.server(&[b"http/1.1"], true)).await
            }
        };
        let tracing = TracingConfig {
            endpoint: Some(format!("https://localhost:{}", collector.port())),
            tls: Some(CollectorTls {
                config: pki.client(&pki.ca, true),
                server_name: None,
            }),
            protocol,
            ..exporting("orders", collector)
        };
        let sidecar = outbound(upstream, tracing).await;
        let (status, _) = get_with(&service_url(&sidecar, "/over-tls"), &[]).await;
        assert_eq!(status, 200);
        let spans = received.wait_for(1, WAIT).await;
        assert!(!spans.is_empty(), "{protocol:?}: no span arrived over TLS");
        assert!(spans.iter().all(|span| span.service == "orders"));
        let metrics = sidecar.handle().tracing().metrics().clone();
        assert_eq!(metrics.dropped.get(), 0, "{protocol:?}");
        sidecar.shutdown().await;
    }
}
