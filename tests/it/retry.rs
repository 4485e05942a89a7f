//! Retries through the real proxy: what is retried, where, how often (per service and
//! per route), and what is not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::support::*;

const POLICIES: &str = "  retries:
    standard:
      attempts: 3
      retry_on: [connect_failure, reset, 503]
      backoff: { base: 5ms, max: 20ms, jitter: 0% }";

fn url(proxy: &remora::Sidecar, path: &str) -> String {
    format!("http://{}{path}", proxy.addrs().service("svc").unwrap())
}

#[tokio::test]
async fn a_flaky_upstream_is_answered_200_after_three_attempts() {
    let (upstream, log) = scripted(|n| if n < 2 { 503 } else { 200 }).await;
    let proxy = with_policies(POLICIES, "    retry: standard", &[upstream]).await;
    let (status, _, body) = get(&url(&proxy, "/flaky")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "answer 2"));
    let attempts: Vec<_> = log
        .all()
        .iter()
        .map(|seen| {
            seen.headers["x-remora-attempt"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let admin = proxy.addrs().admin.unwrap();
    assert_eq!(
        metric(admin, "remora_retries_total{service=\"svc\"}").await,
        2.0
    );
}

#[tokio::test]
async fn a_retry_goes_to_the_other_endpoint() {
    let (bad, bad_log) = scripted(|_| 503).await;
    let (good, good_log) = scripted(|_| 200).await;
    let proxy = with_policies(POLICIES, "    retry: standard", &[bad, good]).await;
    for _ in 0..10 {
        let (status, _, _) = get(&url(&proxy, "/")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(good_log.len(), 10, "every call ended on the good endpoint");
    assert!(
        bad_log.len() <= 10,
        "never two attempts on the failing endpoint per call"
    );
}

#[tokio::test]
async fn post_is_not_retried_unless_configured() {
    let (upstream, log) = scripted(|n| if n == 0 { 503 } else { 200 }).await;
    let proxy = with_policies(POLICIES, "    retry: standard", &[upstream]).await;
    let (status, _, _) = send("POST", &url(&proxy, "/orders"), b"{}".to_vec()).await;
    assert_eq!(status, 503);
    assert_eq!(log.len(), 1);

    let policies = POLICIES.replace(
        "attempts: 3",
        "attempts: 3\n      retry_non_idempotent: true",
    );
    let (upstream, log) = scripted(|n| if n == 0 { 503 } else { 200 }).await;
    let proxy = with_policies(&policies, "    retry: standard", &[upstream]).await;
    let (status, _, _) = send("POST", &url(&proxy, "/orders"), b"{\"id\": 1}".to_vec()).await;
    assert_eq!(status, 200);
    let seen = log.all();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].body, seen[0].body,
        "the body is replayed byte for byte"
    );
}

#[tokio::test]
async fn a_body_larger_than_the_replay_buffer_is_sent_once() {
    let (upstream, log) = scripted(|n| if n == 0 { 503 } else { 200 }).await;
    let proxy = with_policies(POLICIES, "    retry: standard", &[upstream]).await;
    let body = vec![b'x'; 100 * 1024];
    let (status, _, _) = send("PUT", &url(&proxy, "/big"), body.clone()).await;
    assert_eq!(status, 503, "not retried");
    let seen = log.all();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.len(), body.len(), "and delivered whole");
}

#[tokio::test]
async fn the_budget_stops_a_retry_storm() {
    let (upstream, log) = scripted(|_| 503).await;
    let policies = "  retries:
    storm:
      attempts: 5
      retry_on: [503]
      backoff: { base: 1ms, max: 1ms, jitter: 0% }
      budget: { ratio: 10%, min_per_second: 1, window: 10s }";
    let proxy = with_policies(policies, "    retry: storm", &[upstream]).await;
    for _ in 0..40 {
        let (status, _, _) = get(&url(&proxy, "/")).await;
        assert_eq!(status, 503);
    }
    // Without a budget 40 calls would make 200 attempts; the budget allows retries of
    // 10% of the calls plus a floor of one per second over its 10s window.
    let attempts = log.len();
    assert!(attempts <= 40 + 4 + 10, "{attempts} attempts");
    let admin = proxy.addrs().admin.unwrap();
    assert!(
        metric(
            admin,
            "remora_retry_budget_exhausted_total{service=\"svc\"}"
        )
        .await
            > 0.0
    );
}

#[tokio::test]
async fn the_rate_limit_counts_calls_not_retries() {
    let (upstream, log) = scripted(|n| if n % 3 < 2 { 503 } else { 200 }).await;
    let policies = format!("{POLICIES}\n  rate_limits:\n    five: {{ rate: 5/m, burst: 5 }}");
    let proxy = with_policies(
        &policies,
        "    retry: standard\n    rate_limit: five",
        &[upstream],
    )
    .await;
    for _ in 0..5 {
        let (status, _, _) = get(&url(&proxy, "/")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(log.len(), 15, "three attempts per call");
    let (status, headers, _) = get(&url(&proxy, "/")).await;
    assert_eq!(status, 429, "the sixth call is the first over the limit");
    assert_eq!(headers["x-remora-error"], "rate-limited");
}

#[tokio::test]
async fn the_fallback_sees_an_exhausted_retry() {
    let (upstream, log) = scripted(|_| 503).await;
    let policies = format!(
        "{POLICIES}\n  fallbacks:\n    soft:\n      on: [5xx]\n      respond: {{ status: 200, body: degraded }}"
    );
    let proxy = with_policies(
        &policies,
        "    retry: standard\n    fallback: soft",
        &[upstream],
    )
    .await;
    let (status, headers, body) = get(&url(&proxy, "/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "degraded"));
    assert_eq!(headers["x-remora-fallback"], "5xx");
    assert_eq!(log.len(), 3, "the fallback answered after the last attempt");
}

#[tokio::test]
async fn a_per_try_timeout_moves_on_to_the_next_attempt() {
    let slow_then_fast = serve(|_r| async {
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        if CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        http::Response::new(full("fast"))
    })
    .await;
    let policies = "  retries:
    quick:
      attempts: 2
      retry_on: [try_timeout]
      per_try_timeout: 100ms
      backoff: { base: 1ms, max: 1ms, jitter: 0% }";
    let proxy = with_policies(policies, "    retry: quick", &[slow_then_fast]).await;
    let started = std::time::Instant::now();
    let (status, _, body) = get(&url(&proxy, "/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "fast"));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn post_is_retried_when_its_connection_failed() {
    // The request never left, so even a POST can go to the next endpoint.
    let dead = dead_endpoint();
    let (good, good_log) = scripted(|_| 200).await;
    let policies = "  retries:
    standard:
      attempts: 2
      retry_on: [connect_failure, 503]
      backoff: { base: 1ms, max: 1ms, jitter: 0% }";
    let extra = "    retry: standard\n    balancer: { algorithm: round_robin }";
    let proxy = with_policies(policies, extra, &[dead, good]).await;
    for _ in 0..4 {
        let (status, _, _) = send("POST", &url(&proxy, "/orders"), b"{}".to_vec()).await;
        assert_eq!(status, 200);
    }
    assert_eq!(good_log.len(), 4);
    // The request is given back unsent, not copied: a body far over the replay bound
    // (64 KiB) is retried whole too.
    let admin = proxy.addrs().admin.unwrap();
    let retries = || metric(admin, "remora_retries_total{service=\"svc\"}");
    let before = retries().await;
    let large = vec![b'x'; 300 * 1024];
    for _ in 0..2 {
        let (status, _, _) = send("POST", &url(&proxy, "/orders"), large.clone()).await;
        assert_eq!(status, 200);
    }
    // Round robin, the retry taking the next endpoint: every call tries the dead one first.
    assert_eq!(retries().await, before + 2.0);
    let seen = good_log.all();
    assert_eq!(seen.len(), 6);
    assert!(
        seen[4..].iter().all(|s| s.body.len() == large.len()),
        "whole bodies"
    );
}

#[tokio::test]
async fn a_route_with_its_own_retry_policy_overrides_the_service_default() {
    // Each path fails its first two requests with 503, then answers 200.
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counts = seen.clone();
    let upstream = serve(move |request: Request<Incoming>| {
        let n = {
            let mut counts = counts.lock().unwrap();
            let count = counts.entry(request.uri().path().to_string()).or_default();
            *count += 1;
            *count
        };
        async move {
            let status = if n <= 2 { 503 } else { 200 };
            Response::builder()
                .status(status)
                .body(full(format!("try {n}")))
                .unwrap()
        }
    })
    .await;
    let policies = "  retries:
    two:
      attempts: 2
      retry_on: [503]
      backoff: { base: 1ms, max: 1ms, jitter: 0% }
    three:
      attempts: 3
      retry_on: [503]
      backoff: { base: 1ms, max: 1ms, jitter: 0% }";
    let service = "    retry: two
    routes:
      - match: { path_prefix: /more }
        retry: three
      - match: { path_prefix: /none }
        retry: none";
    let proxy = with_policies(policies, service, &[upstream]).await;
    let tries = |path: &str| seen.lock().unwrap().get(path).copied().unwrap_or(0);

    let (status, _, body) = get(&url(&proxy, "/default/x")).await;
    assert_eq!((status.as_u16(), body.as_str()), (503, "try 2"));
    assert_eq!(tries("/default/x"), 2, "the service's two attempts");

    let (status, _, body) = get(&url(&proxy, "/more/x")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "try 3"));
    assert_eq!(tries("/more/x"), 3, "the route's three attempts");

    let (status, _, body) = get(&url(&proxy, "/none/x")).await;
    assert_eq!((status.as_u16(), body.as_str()), (503, "try 1"));
    assert_eq!(tries("/none/x"), 1, "the route switches retries off");
}
