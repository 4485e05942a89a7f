//! The access log line says what a user asks of a call: who called (client address,
//! Host), what went up and came back (body bytes as they streamed), how many tries it took and the
//! answering endpoint's time, and, when remora answered itself, why (a rate limit, a
//! fallback and its trigger).

use crate::support::log_lines::LogLines;
use crate::support::*;

/// The one access log line of a call to `path`.
fn line_of(log: &LogLines, path: &str) -> String {
    let lines = log.access(path);
    assert_eq!(lines.len(), 1, "{}", log.text());
    lines[0].clone()
}

fn assert_has(line: &str, fields: &[&str]) {
    for field in fields {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}

#[tokio::test]
async fn a_retried_call_logs_client_host_bytes_attempts_and_upstream_time() {
    let log = LogLines::default();
    let _capture = log.capture();
    let (upstream, _) = scripted(|n| if n == 0 { 503 } else { 200 }).await;
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         policies:\n  retries:\n    twice: {{ attempts: 2, retry_on: [5xx], retry_non_idempotent: true, backoff: {{ base: 1ms, max: 1ms }} }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n    retry: twice\n"
    ))
    .await;
    let addr = proxy.addrs().service("svc").unwrap();
    let request = http::Request::post(format!("http://{addr}/orders"))
        .header("host", "shop.example")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"hello",
        )))
        .unwrap();
    let response = http1_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let line = line_of(&log, "/orders");
    assert_has(
        &line,
        &[
            "host=\"shop.example\"",
            "client=127.0.0.1:",
            "attempts=2",
            "request_bytes=5",
            "response_bytes=",
            "upstream_ms=",
            &format!("upstream={upstream}"),
            "status=200",
        ],
    );
    assert!(!line.contains("reason="), "{line}");
}

#[tokio::test]
async fn a_rate_limited_call_logs_the_reason_and_no_try() {
    let log = LogLines::default();
    let _capture = log.capture();
    let (upstream, _) = recording("up").await;
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         policies:\n  rate_limits:\n    one: {{ rate: 1/m, burst: 1 }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n    rate_limit: one\n"
    ))
    .await;
    let url = format!("http://{}/limited", proxy.addrs().service("svc").unwrap());
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(get(&url).await.0, 429);
    let lines = log.access("/limited");
    assert_eq!(lines.len(), 2, "{}", log.text());
    assert_has(
        &lines[1],
        &["status=429", "reason=\"rate-limited\"", "attempts=0"],
    );
    assert!(!lines[1].contains("upstream="), "{}", lines[1]);
}

#[tokio::test]
async fn a_fallback_answer_logs_its_trigger() {
    let log = LogLines::default();
    let _capture = log.capture();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         policies:\n  fallbacks:\n    soft:\n      on: [connect_failure]\n      respond: {{ status: 200, body: degraded }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{closed}]\n    fallback: soft\n"
    ))
    .await;
    let url = format!("http://{}/soft", proxy.addrs().service("svc").unwrap());
    let (status, _, body) = get(&url).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "degraded"));
    let line = line_of(&log, "/soft");
    assert_has(
        &line,
        &["status=200", "fallback=\"connect_failure\"", "attempts=1"],
    );
}
