//! The pools through real sockets: reuse, early drops, the HTTP/2 spread, errors.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tower::ServiceExt;

use super::*;
use crate::discovery::Instance;

/// An upstream that counts the connections it accepted. `/slow` answers after 200 ms;
/// `/endless` sends one chunk and then never ends; anything else answers `ok` at once.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<_>| async move {
                    type Chunk = Result<Frame<Bytes>, Infallible>;
                    let body = match request.uri().path() {
                        "/slow" => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            http_body_util::Either::Left(http_body_util::Full::new(Bytes::from(
                                "ok",
                            )))
                        }
                        "/endless" => {
                            let first = futures_util::stream::iter([Ok::<_, Infallible>(
                                Frame::data(Bytes::from("part")),
                            )]);
                            let rest = futures_util::stream::pending::<Chunk>();
                            return Ok::<_, Infallible>(Response::new(
                                http_body_util::Either::Right(StreamBody::new(
                                    futures_util::StreamExt::chain(first, rest),
                                )),
                            ));
                        }
                        _ => http_body_util::Either::Left(http_body_util::Full::new(Bytes::from(
                            "ok",
                        ))),
                    };
                    Ok(Response::new(body))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

fn forward(addr: SocketAddr, protocol: UpstreamProtocol, clients: &UpstreamClients) -> Forward {
    let endpoints = Arc::new(EndpointSet::new());
    endpoints.update(&[Instance::new(addr)]);
    Forward::new(Arc::from("svc"), endpoints, protocol, clients.clone())
}

/// `forward`'s answer to a request for `path` over `version`.
async fn send(forward: &Forward, path: &str, version: Version) -> Response<ProxyBody> {
    forward
        .clone()
        .oneshot(request(path, version))
        .await
        .unwrap()
}

fn request(path: &str, version: Version) -> Request<ProxyBody> {
    Request::builder()
        .uri(path)
        .version(version)
        .header("host", "svc")
        .body(ProxyBody::empty())
        .unwrap()
}

async fn body_of(response: Response<ProxyBody>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

fn config() -> PoolConfig {
    PoolConfig {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(90),
        max_idle_per_endpoint: 256,
        http2_max_connections: 4,
        http2_streams_per_connection: 100,
        http2_keep_alive_interval: Duration::from_secs(30),
        max_connecting_per_endpoint: 16,
        max_pending_per_endpoint: 4096,
        pending_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn http1_connections_go_back_to_the_pool_when_the_body_ends() {
    let (addr, accepted) = upstream().await;
    let clients = UpstreamClients::new(config());
    let forward = forward(addr, UpstreamProtocol::Http1, &clients);
    for _ in 0..5 {
        let response = send(&forward, "/", Version::HTTP_11).await;
        assert_eq!(body_of(response).await, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");
    assert_eq!(clients.idle_connections(), 1);
}

#[tokio::test]
async fn an_http1_body_dropped_before_its_end_closes_its_connection() {
    let (addr, accepted) = upstream().await;
    let clients = UpstreamClients::new(config());
    let forward = forward(addr, UpstreamProtocol::Http1, &clients);
    let response = send(&forward, "/endless", Version::HTTP_11).await;
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "part");
    drop(body);
    assert_eq!(clients.idle_connections(), 0, "not reusable mid-body");
    let response = send(&forward, "/", Version::HTTP_11).await;
    assert_eq!(body_of(response).await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn http2_streams_spread_over_connections_up_to_the_maximum() {
    let (addr, accepted) = upstream().await;
    let clients = UpstreamClients::new(config().with_http2(2, 2).unwrap());
    let forward = forward(addr, UpstreamProtocol::Http2, &clients);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let forward = forward.clone();
            tokio::spawn(async move {
                let response = forward
                    .oneshot(request("/slow", Version::HTTP_2))
                    .await
                    .unwrap();
                body_of(response).await
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), "ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "two connections at most"
    );
    for _ in 0..3 {
        let response = send(&forward, "/", Version::HTTP_2).await;
        assert_eq!(body_of(response).await, "ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "idle connections are reused"
    );
    assert_eq!(clients.idle_connections(), 2);
}

#[tokio::test]
async fn sequential_http2_streams_share_one_connection() {
    let (addr, accepted) = upstream().await;
    let clients = UpstreamClients::new(config());
    let forward = forward(addr, UpstreamProtocol::Http2, &clients);
    for _ in 0..5 {
        let response = send(&forward, "/", Version::HTTP_2).await;
        assert_eq!(body_of(response).await, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// The connection's task ends, and the socket closes, once the pool lets the connection
/// go: its I/O runs in that task and ends only after the dispatcher is dropped.
#[tokio::test]
async fn an_http2_connection_the_pool_lets_go_is_closed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, upstream_saw_close) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(|_: Request<_>| async {
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from("ok"))))
        });
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
        let _ = closed.send(());
    });
    let clients = UpstreamClients::new(config());
    let forward = forward(addr, UpstreamProtocol::Http2, &clients);
    let response = send(&forward, "/", Version::HTTP_2).await;
    assert_eq!(body_of(response).await, "ok");
    drop((forward, clients));
    // A bound so that a regression fails instead of hanging.
    tokio::time::timeout(Duration::from_secs(10), upstream_saw_close)
        .await
        .expect("the upstream connection is closed")
        .unwrap();
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error_and_a_reset_is_not() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let clients = UpstreamClients::new(config());
    for protocol in [UpstreamProtocol::Http1, UpstreamProtocol::Http2] {
        let error = forward(closed, protocol, &clients)
            .oneshot(request("/", Version::HTTP_11))
            .await
            .err()
            .expect("a refused connection fails");
        assert!(matches!(error, ProxyError::Connect { .. }), "{error:?}");
    }

    // Accepts, then closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let error = forward(rude, UpstreamProtocol::Http1, &clients)
        .oneshot(request("/", Version::HTTP_11))
        .await
        .err()
        .expect("a closed connection fails");
    assert!(matches!(error, ProxyError::Upstream { .. }), "{error:?}");
}

#[test]
fn pool_config_refuses_zero_http2_limits() {
    assert_eq!(
        config().with_http2(0, 1),
        Err(PoolConfigError::NoHttp2Connections)
    );
    assert_eq!(
        config().with_http2(1, 0),
        Err(PoolConfigError::NoHttp2Streams)
    );
}

/// A TLS client config trusting nothing (its handshakes fail at the certificate).
fn tls(alpn: &[&[u8]]) -> Arc<UpstreamTls> {
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("orders").unwrap();
    Arc::new(UpstreamTls::new(config, name))
}

#[test]
fn each_pool_offers_only_the_protocol_it_speaks() {
    let tls = tls(&[b"h2", b"http/1.1"]);
    assert_eq!(tls.alpn(false), [b"http/1.1".to_vec()]);
    assert_eq!(tls.alpn(true), [b"h2".to_vec()]);
}

#[tokio::test]
async fn plaintext_and_each_tls_config_have_pools_of_their_own() {
    let clients = UpstreamClients::new(config());
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let (one, two) = (tls(&[]), tls(&[]));
    assert_ne!(one.id(), two.id());
    let plain = clients.endpoint(addr, None);
    let first = clients.endpoint(addr, Some(&one));
    assert!(Arc::ptr_eq(&plain, &clients.endpoint(addr, None)));
    assert!(Arc::ptr_eq(&first, &clients.endpoint(addr, Some(&one))));
    assert!(!Arc::ptr_eq(&plain, &first));
    assert!(!Arc::ptr_eq(&first, &clients.endpoint(addr, Some(&two))));
    assert!(plain.tls.is_none());
    assert_eq!(first.tls.as_ref().map(|t| t.id()), Some(one.id()));
}

#[tokio::test]
async fn a_silent_tls_server_times_out_as_a_connect_error() {
    // Accepts, then never answers the ClientHello.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let mut settings = config();
    settings.connect_timeout = Duration::from_millis(100);
    let clients = UpstreamClients::new(settings);
    let tls = EndpointTls::Always(tls(&[]));
    for protocol in [UpstreamProtocol::Http1, UpstreamProtocol::Http2] {
        let error = forward(silent, protocol, &clients)
            .with_tls(tls.clone())
            .oneshot(request("/", Version::HTTP_11))
            .await
            .err()
            .expect("a silent server fails");
        assert!(matches!(error, ProxyError::Connect { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("TLS handshake timed out after 100ms"),
            "{message}"
        );
    }
}

/// A frame: 24-bit length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u32).to_be_bytes();
    let mut out = vec![length[1], length[2], length[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HEADERS with `:status: 200` (static index 8), END_HEADERS, and END_STREAM if `last`.
fn status_200(stream: u32, last: bool) -> Vec<u8> {
    frame(0x1, if last { 0x5 } else { 0x4 }, stream, &[0x88])
}

/// An HTTP/2 upstream written by hand. For each request's HEADERS it writes the bytes
/// `answer` gives for the connection (numbered from 0 as accepted) and the stream; it
/// never answers a PING. Gives its address, how many connections it accepted and how
/// many PINGs (not acks) came.
async fn scripted_http2_upstream(
    answer: fn(usize, u32) -> Vec<u8>,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, pings) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (count, seen) = (accepted.clone(), pings.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let connection = count.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                // Empty SETTINGS, and the ack of the client's.
                let mut hello = frame(0x4, 0, 0, &[]);
                hello.extend(frame(0x4, 0x1, 0, &[]));
                socket.write_all(&hello).await.unwrap();
                let mut read = Vec::new();
                let mut at = 24; // the client's preface
                loop {
                    let mut chunk = [0u8; 4096];
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read.extend_from_slice(&chunk[..n]),
                    }
                    while read.len() >= at + 9 {
                        let length =
                            u32::from_be_bytes([0, read[at], read[at + 1], read[at + 2]]) as usize;
                        if read.len() < at + 9 + length {
                            break;
                        }
                        let (kind, flags) = (read[at + 3], read[at + 4]);
                        let stream = u32::from_be_bytes([
                            read[at + 5],
                            read[at + 6],
                            read[at + 7],
                            read[at + 8],
                        ]) & 0x7fff_ffff;
                        at += 9 + length;
                        if kind == 0x6 && flags & 0x1 == 0 {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                        if kind == 0x1 {
                            let out = answer(connection, stream);
                            if socket.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, accepted, pings)
}

/// The first stream gets a head and one chunk, and stays open.
fn head_and_one_chunk(connection: usize, stream: u32) -> Vec<u8> {
    match (connection, stream) {
        (0, 1) => [status_200(1, false), frame(0x0, 0, 1, b"part")].concat(),
        _ => Vec::new(),
    }
}

/// Every request gets an empty 200; the first connection then sends GOAWAY (last stream
/// 1, NO_ERROR) and stays open.
fn goaway_after_the_first_answer(connection: usize, stream: u32) -> Vec<u8> {
    let mut out = status_200(stream, true);
    if connection == 0 {
        out.extend(frame(0x7, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
    }
    out
}

/// On the first connection, the first answer's head without its end, then GOAWAY (last
/// stream 1, NO_ERROR): the connection lives on for that stream but takes no new one.
/// Every other request gets an empty 200.
fn goaway_with_the_first_answer_open(connection: usize, stream: u32) -> Vec<u8> {
    match connection {
        0 => [
            status_200(stream, false),
            frame(0x7, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]),
        ]
        .concat(),
        _ => status_200(stream, true),
    }
}

/// A call that finds its connection refusing new streams (GOAWAY came while a stream
/// still runs on it) is sent on a new connection instead of failing.
#[tokio::test]
async fn a_call_refused_by_a_connection_going_away_goes_out_on_a_new_one() {
    let (addr, accepted, _) = scripted_http2_upstream(goaway_with_the_first_answer_open).await;
    let clients = UpstreamClients::new(config());
    let forward = forward(addr, UpstreamProtocol::Http2, &clients);
    let open = send(&forward, "/", Version::HTTP_2).await;
    assert_eq!(open.status(), 200);
    // Time for the GOAWAY to be read.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = send(&forward, "/", Version::HTTP_2).await;
    assert_eq!(response.status(), 200);
    assert!(body_of(response).await.is_empty());
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(open);
}

/// A connection whose server sent GOAWAY takes no new call: the next call opens another
/// connection and goes out on it, and no call fails.
#[tokio::test]
async fn after_a_goaway_the_next_call_goes_out_on_a_new_connection() {
    let (addr, accepted, _) = scripted_http2_upstream(goaway_after_the_first_answer).await;
    let clients = UpstreamClients::new(config());
    let forward = forward(addr, UpstreamProtocol::Http2, &clients);
    for _ in 0..3 {
        let response = send(&forward, "/", Version::HTTP_2).await;
        assert_eq!(response.status(), 200);
        assert!(body_of(response).await.is_empty());
        // Time for the GOAWAY to be read before the next call.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the first connection, then one that lasts"
    );
}

/// A connection whose server stops answering PINGs is closed once a PING waited past
/// `KEEP_ALIVE_TIMEOUT`, and the stream open on it fails instead of hanging.
#[tokio::test(start_paused = true)]
async fn an_http2_upstream_that_answers_no_ping_is_closed_and_its_stream_fails() {
    let (addr, _, pings) = scripted_http2_upstream(head_and_one_chunk).await;
    let mut settings = config();
    settings.http2_keep_alive_interval = Duration::from_secs(5);
    let clients = UpstreamClients::new(settings);
    let forward = forward(addr, UpstreamProtocol::Http2, &clients);
    let started = tokio::time::Instant::now();
    let mut body = send(&forward, "/", Version::HTTP_2).await.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "part");
    let next = tokio::time::timeout(Duration::from_secs(120), body.frame())
        .await
        .expect("the stream fails rather than hang");
    assert!(matches!(next, Some(Err(_))), "{next:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) + super::http2::KEEP_ALIVE_TIMEOUT,
        "closed after {waited:?}"
    );
    assert_eq!(pings.load(Ordering::SeqCst), 1, "one PING, never answered");
    assert_eq!(
        clients.connections(addr, None),
        Some(ConnectionCount::default())
    );
}

#[test]
fn a_request_body_of_known_size_declares_its_length_where_http_gives_it_meaning() {
    let declared = |method: http::Method, body: ProxyBody, given: Option<&str>| {
        let mut head = Request::builder().method(method);
        if let Some(length) = given {
            head = head.header(http::header::CONTENT_LENGTH, length);
        }
        let mut head = head.body(()).unwrap();
        super::exchange::declare_length(&mut head, &body);
        let values: Vec<_> = head
            .headers()
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        values
    };
    let full = || ProxyBody::full(Bytes::from_static(b"hello"));
    assert_eq!(declared(http::Method::POST, full(), None), ["5"]);
    assert_eq!(declared(http::Method::GET, full(), None), ["5"]);
    assert_eq!(
        declared(http::Method::POST, ProxyBody::empty(), None),
        ["0"]
    );
    assert!(declared(http::Method::GET, ProxyBody::empty(), None).is_empty());
    assert_eq!(declared(http::Method::POST, full(), Some("5")), ["5"]);
}
