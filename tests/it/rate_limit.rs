//! Rate limits and the concurrency cap through the real proxy.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpSocket;

use crate::support::*;

fn url(proxy: &remora::Sidecar) -> String {
    format!("http://{}/", proxy.addrs().service("svc").unwrap())
}

#[tokio::test]
async fn over_the_limit_is_429_with_the_limiters_wait() {
    let (upstream, log) = scripted(|_| 200).await;
    let policies = "  rate_limits:\n    slow: { rate: 1/2s, burst: 2 }";
    let proxy = with_policies(policies, "    rate_limit: slow", &[upstream]).await;
    assert_eq!(get(&url(&proxy)).await.0, 200);
    assert_eq!(get(&url(&proxy)).await.0, 200);
    let (status, headers, _) = get(&url(&proxy)).await;
    assert_eq!(status, 429);
    assert_eq!(headers["x-remora-error"], "rate-limited");
    // One token every 2s: the wait is just under 2s, rounded up to whole seconds.
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(log.len(), 2);
    let admin = proxy.addrs().admin.unwrap();
    assert_eq!(
        metric(admin, "remora_rate_limited_total{service=\"svc\"}").await,
        1.0
    );
}

#[tokio::test]
async fn grpc_callers_get_resource_exhausted() {
    let (upstream, _log) = scripted(|_| 200).await;
    let policies = "  rate_limits:\n    one: { rate: 1/m, burst: 1 }";
    let proxy = with_policies(policies, "    rate_limit: one", &[upstream]).await;
    get(&url(&proxy)).await;
    let request = Request::post(url(&proxy))
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = http2_client().request(request).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "8");
}

/// GET through `proxy` from the source address `from`.
async fn get_from(from: &str, target: std::net::SocketAddr) -> u16 {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(target).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    status_of(&read_all(&mut stream, Duration::from_secs(2)).await)
}

#[tokio::test]
async fn client_ip_keys_are_limited_separately() {
    let (upstream, _log) = scripted(|_| 200).await;
    let policies = "  rate_limits:\n    per_client: { rate: 1/m, burst: 1, key: client_ip }";
    let proxy = with_policies(policies, "    rate_limit: per_client", &[upstream]).await;
    let target = proxy.addrs().service("svc").unwrap();
    assert_eq!(get_from("127.0.0.1", target).await, 200);
    assert_eq!(get_from("127.0.0.1", target).await, 429);
    assert_eq!(
        get_from("127.0.0.2", target).await,
        200,
        "another client has its own bucket"
    );
}

#[tokio::test]
async fn header_keys_are_limited_separately() {
    let (upstream, _log) = scripted(|_| 200).await;
    let policies = "  rate_limits:\n    per_key: { rate: 1/m, burst: 1, key: 'header:x-api-key' }";
    let proxy = with_policies(policies, "    rate_limit: per_key", &[upstream]).await;
    let call = |key: &'static str| {
        let url = url(&proxy);
        async move {
            let request = Request::get(url)
                .header("x-api-key", key)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            http1_client()
                .request(request)
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(call("a").await, 200);
    assert_eq!(call("a").await, 429);
    assert_eq!(call("b").await, 200);
}

#[tokio::test]
async fn the_concurrency_cap_sheds_at_once() {
    let slow = serve(|_r: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Response::new(full("slow"))
    })
    .await;
    let proxy = with_policies("  {}", "    max_in_flight: 1", &[slow]).await;
    let first = tokio::spawn(get_owned(url(&proxy)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let (status, headers, _) = get(&url(&proxy)).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-remora-error"], "overloaded");
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "shed, not queued"
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(get(&url(&proxy)).await.0, 200, "capacity returns");
}

async fn get_owned(url: String) -> u16 {
    get(&url).await.0.as_u16()
}
