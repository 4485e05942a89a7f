//! Timeouts through the real proxy: the overall bound, gRPC deadlines honoured and
//! passed on with the elapsed time subtracted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;

use crate::support::*;

async fn slow(delay: Duration) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let addr = serve(move |request: Request<Incoming>| {
        let record = record.clone();
        async move {
            if let Some(timeout) = request.headers().get("grpc-timeout") {
                record
                    .lock()
                    .unwrap()
                    .push(timeout.to_str().unwrap().to_string());
            }
            tokio::time::sleep(delay).await;
            Response::new(full("late"))
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test]
async fn an_overall_timeout_is_504() {
    let (upstream, _) = slow(Duration::from_secs(3)).await;
    let proxy = with_policies(
        "  timeouts: { fast: 200ms }",
        "    timeout: fast",
        &[upstream],
    )
    .await;
    let started = Instant::now();
    let (status, headers, _) = get(&format!(
        "http://{}/",
        proxy.addrs().service("svc").unwrap()
    ))
    .await;
    assert_eq!(status, 504);
    assert_eq!(headers["x-remora-error"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn an_inline_timeout_works_too() {
    let (upstream, _) = slow(Duration::from_secs(3)).await;
    let proxy = with_policies("  {}", "    timeout: 150ms", &[upstream]).await;
    let (status, _, _) = get(&format!(
        "http://{}/",
        proxy.addrs().service("svc").unwrap()
    ))
    .await;
    assert_eq!(status, 504);
}

async fn grpc_call(url: &str, grpc_timeout: &str) -> (http::HeaderMap, Duration) {
    let request = Request::post(url)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .unwrap();
    let started = Instant::now();
    let response = http2_client().request(request).await.unwrap();
    (response.headers().clone(), started.elapsed())
}

#[tokio::test]
async fn an_incoming_grpc_timeout_bounds_the_call() {
    let (upstream, _) = slow(Duration::from_secs(3)).await;
    let proxy = with_policies("  {}", "    protocol: http2", &[upstream]).await;
    let url = format!(
        "http://{}/pkg.Svc/Method",
        proxy.addrs().service("svc").unwrap()
    );
    let (headers, elapsed) = grpc_call(&url, "200m").await;
    assert_eq!(headers["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn the_grpc_timeout_is_passed_on_with_the_elapsed_time_subtracted() {
    let (upstream, seen) = slow(Duration::from_millis(10)).await;
    let policies = "  faults:\n    lag: { delay: { percent: 100%, duration: 300ms } }";
    let proxy = with_policies(policies, "    protocol: http2\n    fault: lag", &[upstream]).await;
    let url = format!(
        "http://{}/pkg.Svc/Method",
        proxy.addrs().service("svc").unwrap()
    );
    grpc_call(&url, "2S").await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let passed_on = parse_grpc_timeout(&seen[0]);
    assert!(
        passed_on < Duration::from_millis(1750) && passed_on > Duration::from_millis(500),
        "2s minus the 300ms injected delay, got {:?} ({})",
        passed_on,
        seen[0]
    );
}

fn parse_grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => panic!("bad unit in {value}"),
    }
}
