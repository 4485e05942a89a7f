//! What `/metrics` and the access log say of the bytes a call streams and of the
//! connections under it: body bytes as they pass (`remora_request_bytes_total`,
//! `remora_response_bytes_total`, the access log's `request_bytes` / `response_bytes`),
//! for chunked HTTP/1.1, HTTP/2 and gRPC streams; failed upstream connects by reason
//! (`remora_upstream_connect_errors_total`); the pools' connections, active while calls
//! hold them and idle once they are back (`remora_upstream_connections`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::net::{TcpListener, TcpStream};

use crate::support::log_lines::LogLines;
use crate::support::metrics_text::{metric, scrape, value_or_zero};
use crate::support::*;
use remora::core::body::BoxError;

const KIB: usize = 1024;

/// Waits (at most 5 s) until `series` reads `expected` on the sidecar's `/metrics`
/// (a body's bytes are added when it ends, just after the client read its last byte).
async fn settles_at(admin: SocketAddr, series: &str, expected: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(admin).await;
        let value = value_or_zero(&text, series);
        if value == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {value}, not {expected}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A body of `chunks` frames of `size` bytes, with no declared length (chunked over
/// HTTP/1.1).
fn streamed(chunks: usize, size: usize) -> TestBody {
    let frames =
        (0..chunks).map(move |_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; size]))));
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// An upstream that reads the request body whole, checks it held `expected` bytes, and
/// answers a 300 KiB body streamed in 30 frames.
async fn streaming_upstream(expected: usize) -> SocketAddr {
    serve(move |request: Request<Incoming>| async move {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), expected, "the upstream got the whole body");
        Response::new(streamed(30, 10 * KIB))
    })
    .await
}

/// Sends `body` to `path` on a connection of its own speaking `version` (HTTP/2: prior
/// knowledge); the status, whether the answer declared its length, and its body's size.
async fn exchange(
    addr: SocketAddr,
    version: Version,
    path: &str,
    body: TestBody,
) -> (u16, bool, usize) {
    let stream = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let mut request = Request::post(format!("http://{addr}{path}"))
        .body(body)
        .unwrap();
    let response = if version == Version::HTTP_2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), stream)
                .await
                .unwrap();
        tokio::spawn(connection);
        *request.version_mut() = Version::HTTP_2;
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(stream).await.unwrap();
        tokio::spawn(connection);
        *request.uri_mut() = path.parse().unwrap();
        request.headers_mut().insert("host", "svc".parse().unwrap());
        sender.send_request(request).await.unwrap()
    };
    let status = response.status().as_u16();
    let declared = response
        .headers()
        .contains_key(http::header::CONTENT_LENGTH);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, declared, body.len())
}

/// The access log line of the call to `path`, once it is written (at the end of the
/// response body).
async fn logged(log: &LogLines, path: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let [line] = &log.access(path)[..] {
            return line.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "one line for {path}:\n{}",
            log.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn bytes_series(name: &str, service: &str) -> String {
    format!("remora_{name}_bytes_total{{direction=\"outbound\",service=\"{service}\",route=\"default\"}}")
}

#[tokio::test]
async fn streamed_bodies_count_the_bytes_that_passed_in_metrics_and_the_access_log() {
    let log = LogLines::default();
    let _capture = log.capture();
    let upstream = streaming_upstream(100 * KIB).await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let admin = proxy.addrs().admin.unwrap();
    let addr = proxy.addrs().service("svc").unwrap();

    // HTTP/1.1: a chunked 100 KiB request, a chunked 300 KiB answer.
    let (status, declared, received) =
        exchange(addr, Version::HTTP_11, "/h1", streamed(25, 4 * KIB)).await;
    assert_eq!((status, declared, received), (200, false, 300 * KIB));
    settles_at(admin, &bytes_series("request", "svc"), (100 * KIB) as f64).await;
    settles_at(admin, &bytes_series("response", "svc"), (300 * KIB) as f64).await;
    let line = logged(&log, "/h1").await;
    for field in [
        "request_bytes=102400",
        "response_bytes=307200",
        "status=200",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }

    // HTTP/2 (both legs): the same bodies, in DATA frames; the counters add them.
    let (status, _, received) = exchange(addr, Version::HTTP_2, "/h2", streamed(25, 4 * KIB)).await;
    assert_eq!((status, received), (200, 300 * KIB));
    settles_at(admin, &bytes_series("request", "svc"), (200 * KIB) as f64).await;
    settles_at(admin, &bytes_series("response", "svc"), (600 * KIB) as f64).await;
    let line = logged(&log, "/h2").await;
    for field in ["request_bytes=102400", "response_bytes=307200"] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}

/// A gRPC message's bytes on the wire: its 5-byte prefix and its encoding.
fn on_the_wire(message: &impl Message) -> usize {
    5 + message.encoded_len()
}

fn reply(message: &str) -> remora::echo::EchoReply {
    remora::echo::EchoReply {
        message: message.into(),
        payload: Vec::new(),
        instance: "test".into(),
    }
}

#[tokio::test]
async fn grpc_streams_count_every_message_both_ways() {
    let grpc = echo::serve().await;
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  rpc:\n    listen: 127.0.0.1:0\n    protocol: http2\n    endpoints: [{grpc}]\n"
    ))
    .await;
    let admin = proxy.addrs().admin.unwrap();
    let mut client = echo::client(proxy.addrs().service("rpc").unwrap()).await;

    // Client streaming: three 10 KiB messages up, one reply down.
    let sent: Vec<_> = (0..3)
        .map(|i| remora::echo::EchoRequest {
            message: i.to_string(),
            payload: vec![7; 10 * KIB],
        })
        .collect();
    let up: usize = sent.iter().map(on_the_wire).sum();
    let answer = client
        .client_stream(futures_util::stream::iter(sent))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.message, "0,1,2");
    let mut down = on_the_wire(&reply("0,1,2"));

    // Server streaming: one message up, five down.
    let (received, code) = echo::stream_to_end(&mut client, "5").await;
    assert_eq!((received, code), (5, tonic::Code::Ok));
    let up = up + on_the_wire(&echo::request("5"));
    down += (0..5)
        .map(|i| on_the_wire(&reply(&i.to_string())))
        .sum::<usize>();

    settles_at(admin, &bytes_series("request", "rpc"), up as f64).await;
    settles_at(admin, &bytes_series("response", "rpc"), down as f64).await;
}

#[tokio::test]
async fn refused_connects_count_by_reason_for_both_protocols() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         services:\n\
         \x20 one:\n    listen: 127.0.0.1:0\n    protocol: http1\n    endpoints: [{closed}]\n\
         \x20 two:\n    listen: 127.0.0.1:0\n    protocol: http2\n    endpoints: [{closed}]\n"
    ))
    .await;
    let admin = proxy.addrs().admin.unwrap();
    for (service, calls) in [("one", 3), ("two", 2)] {
        let url = format!("http://{}/", proxy.addrs().service(service).unwrap());
        for _ in 0..calls {
            assert_eq!(get(&url).await.0, 502);
        }
    }
    let text = scrape(admin).await;
    for (service, calls) in [("one", 3.0), ("two", 2.0)] {
        let series = format!(
            "remora_upstream_connect_errors_total{{service=\"{service}\",reason=\"refused\"}}"
        );
        assert_eq!(value_or_zero(&text, &series), calls, "{series} in\n{text}");
    }
    assert!(!text.contains("reason=\"timeout\""), "{text}");
}

/// An HTTP/1.1 and h2c upstream that counts the connections it accepts and holds every
/// answer until the test adds permits to `gate`.
async fn gated_upstream(gate: Arc<tokio::sync::Semaphore>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let gate = gate.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let gate = gate.clone();
                    async move {
                        gate.acquire().await.unwrap().forget();
                        Ok::<_, std::convert::Infallible>(Response::new(full("ok")))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn pool_gauges_show_connections_active_under_calls_and_idle_after() {
    const CALLS: usize = 4;
    // HTTP/1.1: one connection per call in flight; HTTP/2: one connection, four streams.
    for (protocol, connections) in [("http1", CALLS), ("http2", 1)] {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (upstream, accepted) = gated_upstream(gate.clone()).await;
        let proxy = outbound_to(&[upstream], protocol).await;
        let admin = proxy.addrs().admin.unwrap();
        let url = format!("http://{}/", proxy.addrs().service("svc").unwrap());
        let calls: Vec<_> = (0..CALLS)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { get(&url).await.0 })
            })
            .collect();
        let active = "remora_upstream_connections{service=\"svc\",state=\"active\"}";
        let idle = "remora_upstream_connections{service=\"svc\",state=\"idle\"}";
        settles_at(admin, active, connections as f64).await;
        assert_eq!(value_or_zero(&scrape(admin).await, idle), 0.0, "{protocol}");

        gate.add_permits(CALLS);
        for call in calls {
            assert_eq!(call.await.unwrap(), 200);
        }
        settles_at(admin, idle, connections as f64).await;
        assert_eq!(metric(admin, active).await, 0.0, "{protocol}");
        assert_eq!(accepted.load(Ordering::SeqCst), connections, "{protocol}");
    }
}

#[tokio::test]
async fn an_empty_chunked_body_ending_in_trailers_passes_and_counts_nothing() {
    let (upstream, log) = recording("up").await;
    let proxy = outbound_to(&[upstream], "http1").await;
    let admin = proxy.addrs().admin.unwrap();
    let addr = proxy.addrs().service("svc").unwrap();
    let answer = raw(
        addr,
        b"POST /t HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\nx-sum: 1\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(log.all()[0].body.len(), 0);
    settles_at(
        admin,
        &bytes_series("response", "svc"),
        "echo:/t".len() as f64,
    )
    .await;
    assert_eq!(metric(admin, &bytes_series("request", "svc")).await, 0.0);
}
