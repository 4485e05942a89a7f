//! Circuit breakers through the real proxy: the service breaker opens, fails fast without
//! touching the upstream, probes half-open and closes; endpoint breakers take a failing
//! endpoint out of balancing instead of failing calls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

const POLICIES: &str = "  breakers:
    tight:
      consecutive_failures: 3
      open_for: 300ms
      max_open_for: 1s
      half_open_requests: 2
      failure_on: [5xx, connect_failure]";

fn url(proxy: &remora::Sidecar) -> String {
    format!("http://{}/", proxy.addrs().service("svc").unwrap())
}

/// An upstream that fails while `failing` is set.
async fn switchable() -> (std::net::SocketAddr, Log, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(true));
    let switch = failing.clone();
    let (addr, log) = scripted(move |_| {
        if switch.load(Ordering::SeqCst) {
            500
        } else {
            200
        }
    })
    .await;
    (addr, log, failing)
}

#[tokio::test]
async fn the_service_breaker_opens_fails_fast_probes_and_closes() {
    let (upstream, log, failing) = switchable().await;
    let proxy = with_policies(POLICIES, "    breaker: tight", &[upstream]).await;
    for _ in 0..3 {
        assert_eq!(get(&url(&proxy)).await.0, 500);
    }
    for _ in 0..5 {
        let (status, headers, _) = get(&url(&proxy)).await;
        assert_eq!(status, 503);
        assert_eq!(headers["x-remora-error"], "breaker-open");
    }
    assert_eq!(log.len(), 3, "an open breaker does not touch the upstream");

    let admin = proxy.addrs().admin.unwrap();
    let (_, _, breakers) = get(&format!("http://{admin}/breakers")).await;
    assert!(breakers.contains("\"open\""), "{breakers}");
    assert_eq!(
        metric(admin, "remora_breaker_state{service=\"svc\",endpoint=\"\"}").await,
        1.0
    );

    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Half-open: the probes reach the upstream and, succeeding, close the breaker.
    for _ in 0..2 {
        assert_eq!(get(&url(&proxy)).await.0, 200);
    }
    for _ in 0..5 {
        assert_eq!(get(&url(&proxy)).await.0, 200);
    }
    assert_eq!(log.len(), 3 + 7);
    assert_eq!(
        metric(admin, "remora_breaker_state{service=\"svc\",endpoint=\"\"}").await,
        0.0
    );
}

#[tokio::test]
async fn a_failed_probe_reopens_the_breaker() {
    let (upstream, log, _failing) = switchable().await;
    let proxy = with_policies(POLICIES, "    breaker: tight", &[upstream]).await;
    for _ in 0..3 {
        get(&url(&proxy)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(&url(&proxy)).await.0,
        500,
        "the probe reaches the failing upstream"
    );
    assert_eq!(
        get(&url(&proxy)).await.0,
        503,
        "and the breaker is open again"
    );
    assert_eq!(log.len(), 4);
}

#[tokio::test]
async fn an_open_breaker_is_grpc_unavailable_for_grpc_callers() {
    let (upstream, _log, _failing) = switchable().await;
    let proxy = with_policies(POLICIES, "    breaker: tight", &[upstream]).await;
    for _ in 0..3 {
        get(&url(&proxy)).await;
    }
    let (status, headers, _) = send_grpc_like(&url(&proxy)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "14");
    assert_eq!(headers["x-remora-error"], "breaker-open");
}

async fn send_grpc_like(url: &str) -> (http::StatusCode, http::HeaderMap, String) {
    let request = http::Request::post(url)
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .unwrap();
    let response = http2_client().request(request).await.unwrap();
    let (parts, _) = response.into_parts();
    (parts.status, parts.headers, String::new())
}

#[tokio::test]
async fn an_open_endpoint_breaker_takes_the_endpoint_out_of_balancing() {
    let (bad, bad_log) = scripted(|_| 500).await;
    let (good, good_log) = scripted(|_| 200).await;
    // One failure opens it: the default balancer (P2C) tries each endpoint within the
    // first two calls but need not go back to the bad one a second time.
    let policies = "  breakers:
    per_endpoint:
      consecutive_failures: 1
      open_for: 10s
      failure_on: [5xx]";
    let proxy = with_policies(policies, "    endpoint_breaker: per_endpoint", &[bad, good]).await;
    let mut failures = 0;
    for _ in 0..20 {
        if get(&url(&proxy)).await.0 != 200 {
            failures += 1;
        }
    }
    assert_eq!(failures, 1, "one failure opens the bad endpoint's breaker");
    assert_eq!(bad_log.len(), 1);
    assert_eq!(good_log.len(), 19);
    let admin = proxy.addrs().admin.unwrap();
    let (_, _, breakers) = get(&format!("http://{admin}/breakers")).await;
    assert!(breakers.contains(&bad.to_string()), "{breakers}");
}

/// A try cut short by its per-try timeout is a failure of `try_timeout` for the service
/// breaker and for the endpoint breakers below the retry layer, not a call that vanished.
#[tokio::test]
async fn per_try_timeouts_count_as_try_timeout_failures() {
    let hung = serve(|_r| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        http::Response::new(full("late"))
    })
    .await;
    let policies = "  retries:
    once:
      attempts: 1
      per_try_timeout: 100ms
  breakers:
    slow:
      consecutive_failures: 2
      open_for: 1m
      max_open_for: 1m
      failure_on: [try_timeout]";
    let proxy = with_policies(policies, "    retry: once\n    breaker: slow", &[hung]).await;
    for _ in 0..2 {
        let (status, headers, _) = get(&url(&proxy)).await;
        assert_eq!(
            (status.as_u16(), headers["x-remora-error"].to_str().unwrap()),
            (504, "timeout")
        );
    }
    let (status, headers, _) = get(&url(&proxy)).await;
    assert_eq!(
        (status.as_u16(), headers["x-remora-error"].to_str().unwrap()),
        (503, "breaker-open"),
        "two per-try timeouts opened the breaker"
    );

    // Endpoint breakers: the hung endpoint leaves the rotation, the good one serves.
    let (good, good_log) = scripted(|_| 200).await;
    let policies = "  retries:
    once:
      attempts: 1
      per_try_timeout: 100ms
  breakers:
    replica:
      consecutive_failures: 1
      open_for: 1m
      max_open_for: 1m
      failure_on: [try_timeout]";
    let extra =
        "    retry: once\n    endpoint_breaker: replica\n    balancer: { algorithm: round_robin }";
    let proxy = with_policies(policies, extra, &[hung, good]).await;
    for _ in 0..4 {
        get(&url(&proxy)).await;
    }
    let before = good_log.len();
    for _ in 0..6 {
        assert_eq!(get(&url(&proxy)).await.0, 200, "the hung endpoint is out");
    }
    assert_eq!(good_log.len(), before + 6);
}
