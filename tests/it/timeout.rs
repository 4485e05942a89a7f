//! Timeouts through the real proxy: the overall bound, a route's own bound over the
//! service's, gRPC deadlines honoured and passed on with the elapsed time subtracted.

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

#[tokio::test]
async fn a_route_with_its_own_timeout_overrides_the_service_default() {
    // Every request is held until `release`, and announced (its path) on arrival.
    let (release, held) = tokio::sync::watch::channel(false);
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<String>();
    let upstream = serve(move |request: Request<Incoming>| {
        let mut held = held.clone();
        let arrived_tx = arrived_tx.clone();
        async move {
            arrived_tx.send(request.uri().path().to_string()).unwrap();
            let _ = held.wait_for(|go| *go).await;
            Response::new(full("released"))
        }
    })
    .await;
    let service = "    timeout: 10s
    routes:
      - match: { path_prefix: /quick }
        timeout: 100ms";
    let proxy = with_policies("  {}", service, &[upstream]).await;
    let url = |path: &str| format!("http://{}{path}", proxy.addrs().service("svc").unwrap());

    // A call under the service's 10s timeout is in flight first...
    let patient = tokio::spawn({
        let url = url("/other");
        async move { get(&url).await }
    });
    let first = tokio::time::timeout(Duration::from_secs(10), arrived.recv())
        .await
        .expect("the first call reached the upstream")
        .unwrap();
    assert_eq!(first, "/other");
    // ...then the route's 100ms timeout ends a later call while both are held.
    let (status, headers, _) = get(&url("/quick/x")).await;
    assert_eq!(status, 504);
    assert_eq!(headers["x-remora-error"], "timeout");
    // Released only now: under the route's timeout the first call would have ended too.
    release.send(true).unwrap();
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), patient)
        .await
        .expect("the first call completes once released")
        .unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "released"));
}
