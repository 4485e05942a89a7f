//! HTTP/2 cleartext (prior knowledge) through the proxy, and protocol translation:
//! the caller's protocol by default, or the one a service is configured with.

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};

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

/// An HTTP/1.1 GET of `url` with `headers`; its status.
async fn get_with(url: String, headers: &[(&str, &str)]) -> http::StatusCode {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    http1_client().request(request).await.unwrap().status()
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

/// An HTTP/2 upstream gets the caller's host as `:authority` and no `host` header that
/// could disagree with it (RFC 9113, 8.3.1: a strict server refuses such a request).
#[tokio::test]
async fn http2_upstream_gets_the_callers_host_as_its_authority() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let upstream = serve(move |request: Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push((
                request.uri().authority().map(|a| a.to_string()),
                request.headers().get("host").cloned(),
            ));
            Response::new(full("ok"))
        }
    })
    .await;
    let proxy = outbound_to(&[upstream], "http2").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let (status, _) = send(&http1_client(), format!("http://{svc}/")).await;
    assert_eq!(status, 200);
    let shared = proxy.addrs().outbound.unwrap();
    let status = get_with(format!("http://{shared}/"), &[("host", "svc:8080")]).await;
    assert_eq!(status, 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (Some(svc.to_string()), None),
            (Some("svc:8080".to_string()), None)
        ]
    );
}

/// `TE: trailers` (which gRPC needs) reaches an HTTP/2 upstream; a `TE` that asks for
/// anything else and the caller's connection headers do not.
#[tokio::test]
async fn only_te_trailers_reaches_an_http2_upstream() {
    let (upstream, log) = recording("a").await;
    let proxy = outbound_to(&[upstream], "http2").await;
    let svc = proxy.addrs().service("svc").unwrap();
    for te in ["trailers", "gzip"] {
        let headers = [
            ("te", te),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
        ];
        assert_eq!(get_with(format!("http://{svc}/"), &headers).await, 200);
    }
    let seen = log.all();
    let te: Vec<_> = seen.iter().map(|s| s.headers.get("te").cloned()).collect();
    assert_eq!(te, [Some("trailers".parse().unwrap()), None]);
    for seen in &seen {
        for hop in ["connection", "x-hop", "keep-alive"] {
            assert!(
                !seen.headers.contains_key(hop),
                "{hop} reached the upstream"
            );
        }
    }
}

/// The request id remora gives an answer goes out as a literal that HPACK must never
/// index, with its text as it is (not Huffman-coded): each id is new, so indexing it
/// only churned the connection's table, and coding it cost more than the bytes it
/// saved (third_party/README.md). Read off the wire of a hand-written HTTP/2 client.
#[tokio::test]
async fn a_request_id_goes_out_as_a_raw_never_indexed_literal() {
    let blocks = answer_blocks(1).await;
    let block = &blocks[0];
    // Never indexed, new name (0x10), the name's length and text, the value's length
    // (36, no Huffman bit), then the id itself.
    let prefix = b"\x10\x0cx-request-id\x24";
    let at = block
        .windows(prefix.len())
        .position(|window| window == prefix)
        .unwrap_or_else(|| panic!("no raw never-indexed x-request-id in {block:02x?}"));
    let id = std::str::from_utf8(&block[at + prefix.len()..at + prefix.len() + 36]).unwrap();
    let groups: Vec<_> = id.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
}

/// `date` changes every second: it goes out as a literal the decoder does not index,
/// on every answer, rather than filling the caller's table with one entry a second.
#[tokio::test]
async fn the_date_goes_out_as_a_literal_that_is_not_indexed() {
    for block in answer_blocks(2).await {
        // Without indexing (0x0f), the static table's `date` (33 = 15 + 0x12), the
        // value's length (29, no Huffman bit), then an IMF-fixdate.
        let prefix = b"\x0f\x12\x1d";
        let at = block
            .windows(prefix.len())
            .position(|window| window == prefix)
            .unwrap_or_else(|| panic!("no unindexed literal date in {block:02x?}"));
        let date = std::str::from_utf8(&block[at + 3..at + 3 + 29]).unwrap();
        assert!(date.ends_with(" GMT"), "{date}");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    }
}

/// The header blocks of the answers to `count` GETs sent one after the other on one
/// HTTP/2 connection (streams 1, 3, ...) of a hand-written client, as they came.
async fn answer_blocks(count: u32) -> Vec<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, _log) = recording("a").await;
    let proxy = outbound_to(&[upstream], "auto").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let mut stream = tokio::net::TcpStream::connect(svc).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS, empty.
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&out).await.unwrap();
    let mut blocks = Vec::new();
    for id in (0..count).map(|n| 2 * n + 1) {
        // HEADERS, END_STREAM | END_HEADERS: GET, http, /, :authority "svc".
        let block = [0x82, 0x86, 0x84, 0x01, 3, b's', b'v', b'c'];
        let mut out = vec![0, 0, block.len() as u8, 1, 0x5];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&block);
        stream.write_all(&out).await.unwrap();
        // Frames until the answer's HEADERS on this stream.
        loop {
            let mut head = [0u8; 9];
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                stream.read_exact(&mut head),
            )
            .await
            .expect("an answer within 10 s")
            .unwrap();
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; length];
            stream.read_exact(&mut payload).await.unwrap();
            let on = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if head[3] == 1 && on == id {
                blocks.push(payload);
                break;
            }
        }
    }
    blocks
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

/// Streams of one caller connection run in that connection's task, and calls of one
/// upstream connection in its own: 200 streams on one connection, their request bodies
/// still open while all are in flight, each get the answer to their own request, with
/// the pool held to one upstream connection.
#[tokio::test]
async fn two_hundred_open_streams_on_one_connection_each_get_their_own_answer() {
    let upstream = serve(|request: Request<hyper::body::Incoming>| async move {
        let path = request.uri().path().to_string();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(format!("{path}:{}", String::from_utf8_lossy(&body))))
    })
    .await;
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         upstream: {{ http2_connections_per_endpoint: 1 }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    protocol: http2\n    endpoints: [{upstream}]\n"
    ))
    .await;
    let svc = proxy.addrs().service("svc").unwrap();
    let stream = tokio::net::TcpStream::connect(svc).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, TestBody>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);

    let mut bodies = Vec::new();
    let mut calls = Vec::new();
    for i in 0..200 {
        let (body, request_body) = channel_body();
        let request = Request::post(format!("http://svc/{i}"))
            .body(request_body)
            .unwrap();
        let mut sender = sender.clone();
        calls.push(tokio::spawn(async move {
            sender.ready().await.unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }));
        bodies.push(body);
    }
    // The bodies end only after every call has been started; the upstream answers a
    // call once its body has ended.
    for (i, body) in bodies.into_iter().enumerate() {
        for part in [format!("{i}-a"), format!("{i}-b")] {
            body.send(Ok(Frame::data(Bytes::from(part)))).await.unwrap();
        }
    }
    for (i, call) in calls.into_iter().enumerate() {
        let (status, body) = call.await.unwrap();
        assert_eq!((status.as_u16(), body), (200, format!("/{i}:{i}-a{i}-b")));
    }
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
