//! HTTP/1.1 through the proxy: routing, streaming bodies both ways, keep-alive and pooling,
//! `Expect: 100-continue`, trailers, header hygiene and the errors remora makes itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn routes_by_dedicated_port_and_by_host_on_the_shared_port() {
    let (upstream, log) = recording("a").await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let shared = proxy.addrs().outbound.unwrap();

    let (status, headers, body) = get(&format!("http://{svc}/x?q=1")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], "a");
    assert_eq!(body, "echo:/x");

    let raw_response = raw(
        shared,
        b"GET /by-host HTTP/1.1\r\nHost: svc:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw_response), 200, "{raw_response}");
    assert!(raw_response.ends_with("echo:/by-host"), "{raw_response}");

    let seen = log.all();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].headers["host"], "svc:80",
        "the caller's Host is kept"
    );
    assert_eq!(seen[0].headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen[0].headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn unknown_destination_is_refused_with_404_and_never_proxied() {
    let (upstream, log) = recording("a").await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let shared = proxy.addrs().outbound.unwrap();
    for host in ["example.com", "127.0.0.1", &upstream.to_string()] {
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let response = raw(shared, request.as_bytes()).await;
        assert_eq!(status_of(&response), 404, "{response}");
        assert!(
            response.contains("x-remora-error: unknown-destination"),
            "{response}"
        );
    }
    let response = raw(shared, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&response), 404, "no Host at all: {response}");
    assert_eq!(log.len(), 0);
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let (upstream, log) = recording("a").await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let response = raw(
        svc,
        b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close, x-private\r\nx-private: 1\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nx-end-to-end: yes\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    let seen = &log.all()[0];
    for name in ["x-private", "keep-alive", "proxy-connection"] {
        assert!(!seen.headers.contains_key(name), "{name} was forwarded");
    }
    assert_eq!(seen.headers["x-end-to-end"], "yes");
}

#[tokio::test]
async fn chunked_request_body_streams_to_the_upstream() {
    const FIRST: &[u8] = b"first chunk;";
    const LAST: &[u8] = b"last chunk";
    // The upstream reports what it has received as soon as the first chunk is in, then
    // reads on and answers with everything it got.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel::<Bytes>(1);
    let upstream = serve(move |request: Request<Incoming>| {
        let arrived_tx = arrived_tx.clone();
        async move {
            let mut body = request.into_body();
            let mut received = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame.unwrap().into_data() else {
                    continue;
                };
                let before = received.len();
                received.extend_from_slice(&data);
                if before < FIRST.len() && received.len() >= FIRST.len() {
                    arrived_tx
                        .send(Bytes::copy_from_slice(&received))
                        .await
                        .unwrap();
                }
            }
            Response::new(full(received))
        }
    })
    .await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();

    // A body of unknown length: hyper sends it chunked, one chunk per frame.
    let (chunks, body) = channel_body();
    let request = Request::post(format!("http://{svc}/upload"))
        .body(body)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<TestBody>();
    let response = tokio::spawn(client.request(request));
    chunks
        .send(Ok(Frame::data(Bytes::from_static(FIRST))))
        .await
        .unwrap();
    // The last chunk is held back until the upstream has the first: a proxy that
    // buffered the body whole would never pass it on, and the wait would time out.
    let seen = tokio::time::timeout(Duration::from_secs(10), arrived.recv())
        .await
        .expect("the upstream never saw the first chunk while the last was held back")
        .unwrap();
    assert_eq!(
        seen, FIRST,
        "exactly the first chunk, before the last was sent"
    );
    chunks
        .send(Ok(Frame::data(Bytes::from_static(LAST))))
        .await
        .unwrap();
    drop(chunks);

    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the call completes once the body ends")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed, [FIRST, LAST].concat());
}

#[tokio::test]
async fn response_body_streams_without_being_buffered_whole() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let upstream = serve(move |_request: Request<Incoming>| {
        let mut release = release_rx.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                tx.send(Ok(Frame::data(Bytes::from_static(b"first;"))))
                    .await
                    .unwrap();
                // The second chunk waits for the client to have seen the first.
                let _ = release.wait_for(|go| *go).await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"second"))))
                    .await;
            });
            Response::new(body)
        }
    })
    .await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let response = http1_client()
        .get(format!("http://{svc}/").parse().unwrap())
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk arrives before the body is complete")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first;");
    release_tx.send(true).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
}

#[tokio::test]
async fn keep_alive_connections_are_reused_and_upstream_connections_pooled() {
    let connections = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_r: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let proxy = outbound_to(&[upstream], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();

    let mut stream = TcpStream::connect(svc).await.unwrap();
    for _ in 0..5 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            .await
            .unwrap();
        let response = read_all(&mut stream, Duration::from_millis(300)).await;
        assert_eq!(status_of(&response), 200, "{response}");
        assert!(response.ends_with("ok"), "{response}");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
}

#[tokio::test]
async fn expect_100_continue_gets_continue_then_the_body_flows() {
    let (upstream, log) = recording("a").await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let mut stream = TcpStream::connect(svc).await.unwrap();
    stream
        .write_all(
            b"POST /e HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = read_all(&mut stream, Duration::from_millis(500)).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"hello").await.unwrap();
    let response = read_all(&mut stream, Duration::from_millis(500)).await;
    assert_eq!(status_of(&response), 200, "{response}");
    let seen = &log.all()[0];
    assert_eq!(seen.body, "hello");
    assert!(!seen.headers.contains_key("expect"));
}

#[tokio::test]
async fn response_trailers_reach_an_http1_client_that_accepts_them() {
    let upstream = serve(|_r: Request<Incoming>| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data")))).await;
            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
        });
        Response::builder()
            .header("trailer", "x-checksum")
            .body(body)
            .unwrap()
    })
    .await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let response = raw(
        svc,
        b"GET / HTTP/1.1\r\nHost: svc\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("x-checksum: abc123"),
        "{response}"
    );
}

#[tokio::test]
async fn a_dead_endpoint_is_a_502_naming_the_connect_failure() {
    let dead = dead_endpoint();
    let proxy = outbound_to(&[dead], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let (status, headers, body) = get(&format!("http://{svc}/")).await;
    assert_eq!(status, 502);
    assert_eq!(headers["x-remora-error"], "connect-failure");
    assert!(body.contains(&dead.to_string()), "{body}");
}

#[tokio::test]
async fn requests_reach_every_endpoint() {
    let (a, log_a) = recording("a").await;
    let (b, log_b) = recording("b").await;
    let proxy = outbound_to(&[a, b], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();
    for _ in 0..10 {
        let (status, _, _) = get(&format!("http://{svc}/")).await;
        assert_eq!(status, 200);
    }
    // The default balancer (P2C peak-EWMA) tries an endpoint it has not measured
    // before one it has, so both are reached; the split then follows latency.
    assert_eq!(log_a.len() + log_b.len(), 10);
    assert!(
        log_a.len() >= 1 && log_b.len() >= 1,
        "{} {}",
        log_a.len(),
        log_b.len()
    );
}
