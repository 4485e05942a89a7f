//! Fallbacks through the real proxy: each trigger degrades to the configured answer with
//! `x-remora-fallback`, an alternate service takes the call, a stale answer is served.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::support::*;

fn url(proxy: &remora::Sidecar) -> String {
    format!("http://{}/price/7", proxy.addrs().service("svc").unwrap())
}

fn policies(triggers: &str, extra: &str) -> String {
    format!(
        "  fallbacks:\n    soft:\n      on: [{triggers}]\n      respond: {{ status: 200, headers: {{ content-type: application/json }}, body: '{{\"price\": 0}}' }}\n{extra}"
    )
}

async fn assert_fallback(proxy: &remora::Sidecar, trigger: &str) {
    let (status, headers, body) = get(&url(proxy)).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "{\"price\": 0}"),
        "{trigger}"
    );
    assert_eq!(headers["x-remora-fallback"], trigger);
    assert_eq!(headers["content-type"], "application/json");
}

fn dead() -> std::net::SocketAddr {
    dead_endpoint()
}

#[tokio::test]
async fn upstream_5xx() {
    let (upstream, _) = scripted(|_| 500).await;
    let proxy = with_policies(&policies("5xx", ""), "    fallback: soft", &[upstream]).await;
    assert_fallback(&proxy, "5xx").await;
    let admin = proxy.addrs().admin.unwrap();
    assert_eq!(
        metric(
            admin,
            "remora_fallbacks_total{service=\"svc\",trigger=\"5xx\",action=\"respond\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn connect_failure() {
    let proxy = with_policies(
        &policies("connect_failure", ""),
        "    fallback: soft",
        &[dead()],
    )
    .await;
    assert_fallback(&proxy, "connect_failure").await;
}

#[tokio::test]
async fn timeout() {
    let slow = serve(|_r: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Response::new(full("late"))
    })
    .await;
    let proxy = with_policies(
        &policies("timeout", ""),
        "    fallback: soft\n    timeout: 100ms",
        &[slow],
    )
    .await;
    assert_fallback(&proxy, "timeout").await;
}

#[tokio::test]
async fn breaker_open() {
    let (upstream, log) = scripted(|_| 500).await;
    let extra = "  breakers:\n    one: { consecutive_failures: 1, open_for: 10s }";
    let proxy = with_policies(
        &policies("breaker_open", extra),
        "    fallback: soft\n    breaker: one",
        &[upstream],
    )
    .await;
    assert_eq!(
        get(&url(&proxy)).await.0,
        500,
        "500 is not a listed trigger"
    );
    assert_fallback(&proxy, "breaker_open").await;
    assert_eq!(log.len(), 1);
}

#[tokio::test]
async fn rate_limited() {
    let (upstream, _) = scripted(|_| 200).await;
    let extra = "  rate_limits:\n    one: { rate: 1/m, burst: 1 }";
    let proxy = with_policies(
        &policies("rate_limited", extra),
        "    fallback: soft\n    rate_limit: one",
        &[upstream],
    )
    .await;
    assert_eq!(get(&url(&proxy)).await.0, 200);
    assert_fallback(&proxy, "rate_limited").await;
}

#[tokio::test]
async fn no_endpoint() {
    let extra = "  breakers:\n    one: { consecutive_failures: 1, open_for: 10s, failure_on: [connect_failure] }";
    let proxy = with_policies(
        &policies("no_endpoint", extra),
        "    fallback: soft\n    endpoint_breaker: one",
        &[dead()],
    )
    .await;
    assert_eq!(
        get(&url(&proxy)).await.0,
        502,
        "the connect failure opens the endpoint breaker"
    );
    assert_fallback(&proxy, "no_endpoint").await;
}

#[tokio::test]
async fn overloaded() {
    let slow = serve(|_r: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Response::new(full("slow"))
    })
    .await;
    let proxy = with_policies(
        &policies("overloaded", ""),
        "    fallback: soft\n    max_in_flight: 1",
        &[slow],
    )
    .await;
    let busy = tokio::spawn({
        let url = url(&proxy);
        async move { get(&url).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_fallback(&proxy, "overloaded").await;
    assert_eq!(busy.await.unwrap(), 200);
}

#[tokio::test]
async fn untriggered_errors_pass_through() {
    let (upstream, _) = scripted(|_| 500).await;
    let proxy = with_policies(&policies("timeout", ""), "    fallback: soft", &[upstream]).await;
    let (status, headers, _) = get(&url(&proxy)).await;
    assert_eq!(status, 500);
    assert!(!headers.contains_key("x-remora-fallback"));
}

#[tokio::test]
async fn an_alternate_service_takes_the_call() {
    let (backup, backup_log) = scripted(|_| 200).await;
    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         policies:\n  fallbacks:\n    degrade:\n      on: [connect_failure]\n      forward_to: backup\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{}]\n    fallback: degrade\n\
         \x20 backup:\n    listen: 127.0.0.1:0\n    endpoints: [{backup}]\n",
        dead()
    );
    let proxy = sidecar(&yaml).await;
    let (status, headers, body) = get(&url(&proxy)).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "answer 0"));
    assert_eq!(headers["x-remora-fallback"], "connect_failure");
    assert_eq!(backup_log.all()[0].path, "/price/7");
}

#[tokio::test]
async fn a_stale_answer_is_served_when_the_upstream_fails() {
    let (upstream, _) = scripted(|n| if n == 0 { 200 } else { 503 }).await;
    let extra = "";
    let policies = format!(
        "  fallbacks:\n    stale:\n      on: [5xx]\n      stale: {{ max_age: 1m }}\n{extra}"
    );
    let proxy = with_policies(&policies, "    fallback: stale", &[upstream]).await;
    let (status, _, body) = get(&url(&proxy)).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "answer 0"));
    let (status, headers, body) = get(&url(&proxy)).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "answer 0"),
        "the stale copy"
    );
    assert_eq!(headers["x-remora-fallback"], "5xx");
}

#[tokio::test]
async fn grpc_callers_get_the_configured_grpc_status() {
    let (upstream, _) = scripted(|_| 503).await;
    let policies = "  fallbacks:\n    soft:\n      on: [5xx]\n      respond: { grpc_status: unavailable, grpc_message: prices are degraded }";
    let proxy = with_policies(policies, "    fallback: soft", &[upstream]).await;
    let request = Request::post(url(&proxy))
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .unwrap();
    let response = http2_client().request(request).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(response.headers()["grpc-message"], "prices are degraded");
    assert_eq!(response.headers()["x-remora-fallback"], "5xx");
}
