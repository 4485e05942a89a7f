//! HTTP/2 cleartext (prior knowledge) through the proxy, and protocol translation:
//! the caller's protocol by default, or the one a service is configured with.

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};

use crate::support::*;

async fn send(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    url: String,
) -> (http::StatusCode, String) {
    let response = client
        .request(
            Request::post(url)
                .body(Full::new(Bytes::from_static(b"ping")))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn h2c_reaches_the_upstream_as_h2_with_auto() {
    let (upstream, log) = recording("a").await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let (status, body) = send(&http2_client(), format!("http://{svc}/h2")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "echo:/h2"));
    let seen = &log.all()[0];
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.body, "ping");
}

#[tokio::test]
async fn h2c_and_http1_share_one_port() {
    let (upstream, log) = recording("a").await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let (h2, _) = send(&http2_client(), format!("http://{svc}/")).await;
    let (h1, _) = send(&http1_client(), format!("http://{svc}/")).await;
    assert_eq!((h2.as_u16(), h1.as_u16()), (200, 200));
    let versions: Vec<_> = log.all().iter().map(|s| s.version).collect();
    assert_eq!(versions, [Version::HTTP_2, Version::HTTP_11]);
}

#[tokio::test]
async fn h2c_caller_to_http1_upstream_gets_a_host_header() {
    let (upstream, log) = recording("a").await;
    let proxy = outbound_to(&[upstream], "http1").await;
    let shared = proxy.addrs().outbound.unwrap();
    // On the shared port the :authority routes the request: connect by address,
    // name the service in the URI.
    let stream = tokio::net::TcpStream::connect(shared).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::get("http://svc/x")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = &log.all()[0];
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers["host"], "svc");
}

#[tokio::test]
async fn http1_caller_to_http2_upstream() {
    let (upstream, log) = recording("a").await;
    let proxy = outbound_to(&[upstream], "http2").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let (status, _) = send(&http1_client(), format!("http://{svc}/")).await;
    assert_eq!(status, 200);
    assert_eq!(log.all()[0].version, Version::HTTP_2);
}

#[tokio::test]
async fn many_concurrent_streams_on_one_h2_connection() {
    let (upstream, log) = recording("a").await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let client = http2_client();
    let calls = (0..100).map(|i| send(&client, format!("http://{svc}/{i}")));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|(status, _)| *status == 200));
    assert_eq!(log.len(), 100);
}

#[tokio::test]
async fn unknown_h2_destination_is_404() {
    let (upstream, log) = recording("a").await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let shared = proxy.addrs().outbound.unwrap();
    let (status, _) = send(&http2_client(), format!("http://{shared}/")).await;
    assert_eq!(status, 404);
    assert_eq!(log.len(), 0);
}
