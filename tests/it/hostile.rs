//! Hostile and broken clients: request smuggling shapes, oversized heads, slowloris and
//! connection floods. Each malformed request is refused with 400 (431 for oversized heads)
//! and the app behind the proxy sees nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

/// A sidecar in front of a recording upstream, with tight limits for these tests.
async fn guarded() -> (remora::Sidecar, std::net::SocketAddr, Log) {
    guarded_with("max_connections: 4, header_read_timeout: 300ms, max_header_bytes: 8192").await
}

async fn guarded_with(limits: &str) -> (remora::Sidecar, std::net::SocketAddr, Log) {
    let (upstream, log) = recording("app").await;
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         inbound: {{ listen: 127.0.0.1:0, app: {upstream} }}\n\
         limits: {{ {limits} }}\n"
    ))
    .await;
    let inbound = proxy.addrs().inbound.unwrap();
    (proxy, inbound, log)
}

async fn refused(request: &[u8], expected: u16) {
    let (_proxy, inbound, log) = guarded().await;
    let response = raw(inbound, request).await;
    assert_eq!(
        status_of(&response),
        expected,
        "request {:?} got {response:?}",
        String::from_utf8_lossy(request)
    );
    // Let anything that was forwarded land before asserting nothing was.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.len(), 0, "the app saw {:?}", log.all());
    // And the proxy still serves well-formed requests.
    let ok = raw(
        inbound,
        b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&ok), 200, "{ok}");
}

/// Both framings: refused with 400 and the connection closed, in either header order
/// (hyper patched: third_party/README.md), so neither the request nor what is pipelined
/// behind it reaches the app.
async fn both_framings_cannot_smuggle(request: &[u8]) {
    let (_proxy, inbound, log) = guarded().await;
    let response = raw(inbound, request).await;
    assert_eq!(status_of(&response), 400, "{response}");
    assert!(
        response.contains("connection: close"),
        "the connection must close after an ambiguous request: {response}"
    );
    assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.len(), 0, "the app saw {:?}", log.all());
}

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    both_framings_cannot_smuggle(
        b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_before_content_length_cannot_smuggle() {
    both_framings_cannot_smuggle(
        b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn conflicting_content_lengths_are_refused() {
    refused(
        b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello",
        400,
    )
    .await;
}

#[tokio::test]
async fn a_content_length_list_is_refused() {
    refused(
        b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 5, 3\r\n\r\nhello",
        400,
    )
    .await;
}

#[tokio::test]
async fn a_bad_chunk_size_is_refused() {
    refused(
        b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn an_overflowing_chunk_size_is_refused() {
    refused(
        b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn a_chunk_size_line_ended_by_bare_lf_is_refused() {
    refused(
        b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_other_than_chunked_last_is_refused() {
    refused(
        b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn obsolete_line_folding_is_refused() {
    refused(
        b"GET / HTTP/1.1\r\nHost: app\r\nX-Folded: a\r\n b\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn a_space_before_the_header_colon_is_refused() {
    refused(
        b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn connect_tunnels_are_refused() {
    refused(b"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n", 400).await;
}

#[tokio::test]
async fn garbage_is_refused() {
    refused(
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let mut request = b"GET / HTTP/1.1\r\nHost: app\r\n".to_vec();
    for i in 0..40 {
        request.extend_from_slice(format!("x-filler-{i}: {}\r\n", "a".repeat(400)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    refused(&request, 431).await;
}

#[tokio::test]
async fn a_slow_header_is_cut_off() {
    let (_proxy, inbound, log) = guarded().await;
    let mut stream = TcpStream::connect(inbound).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a")
        .await
        .unwrap();
    // header_read_timeout is 300ms: the proxy closes (maybe with a 408) well before 5s.
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        read_all(&mut stream, Duration::from_secs(10)),
    )
    .await;
    let response = closed.expect("the slow connection was closed");
    assert!(
        response.is_empty() || status_of(&response) == 408,
        "{response}"
    );
    assert_eq!(log.len(), 0);
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    // Idle keep-alive connections count against the cap; hyper's header read timeout also
    // bounds keep-alive idleness, so it is long here.
    let (proxy, inbound, _log) = guarded_with("max_connections: 4, header_read_timeout: 10s").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(inbound).await.unwrap();
        // A complete request per connection proves each was accepted and is counted.
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .unwrap();
        let response = read_all(&mut stream, Duration::from_millis(300)).await;
        assert_eq!(status_of(&response), 200);
        held.push(stream);
    }
    let mut extra = TcpStream::connect(inbound).await.unwrap();
    let _ = extra
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await;
    let response = read_all(&mut extra, Duration::from_secs(2)).await;
    assert!(
        response.is_empty(),
        "the fifth connection was served: {response}"
    );

    let admin = proxy.addrs().admin.unwrap();
    assert_eq!(
        metric(
            admin,
            "remora_connections_rejected_total{listener=\"inbound\"}"
        )
        .await,
        1.0
    );

    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = raw(
        inbound,
        b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        status_of(&ok),
        200,
        "capacity returns when connections close: {ok}"
    );
}

/// After a refused CONNECT the connection is closed: bytes pipelined behind it (meant
/// for a tunnel) are never read as a request.
#[tokio::test]
async fn a_refused_connect_closes_its_connection() {
    let (_proxy, inbound, log) = guarded().await;
    let response = raw(
        inbound,
        b"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\nGET /behind HTTP/1.1\r\nHost: app\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 400, "{response}");
    assert!(response.contains("connection: close"), "{response}");
    assert_eq!(
        response.matches("HTTP/1.1 ").count(),
        1,
        "one answer only: {response}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.len(), 0, "the app saw {:?}", log.all());
}

/// An absolute-form request names its destination: a dedicated port serves it only for
/// its own service, and the inbound listener (origin form only) never.
#[tokio::test]
async fn absolute_form_for_another_destination_is_refused_on_every_listener() {
    let (upstream, log) = recording("orders").await;
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         inbound: {{ listen: 127.0.0.1:0, app: {upstream} }}\n\
         services:\n  orders:\n    listen: 127.0.0.1:0\n    hosts: [orders.internal]\n    endpoints: [{upstream}]\n"
    ))
    .await;
    let dedicated = proxy.addrs().service("orders").unwrap();
    let foreign =
        b"GET http://payments/charge HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&raw(dedicated, foreign).await), 400);
    let inbound = proxy.addrs().inbound.unwrap();
    assert_eq!(status_of(&raw(inbound, foreign).await), 400);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.len(), 0, "the app saw {:?}", log.all());

    // Its own names are served, in absolute form as in origin form.
    for request in [
        &b"GET http://orders/a HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"[..],
        b"GET http://orders.internal:80/b HTTP/1.1\r\nHost: orders.internal\r\nConnection: close\r\n\r\n",
        b"GET /c HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n",
    ] {
        let response = raw(dedicated, request).await;
        assert_eq!(status_of(&response), 200, "{response}");
    }
    assert_eq!(log.len(), 3);
}

/// A `Transfer-Encoding` line ended by a bare LF beside a `Content-Length` is refused
/// like any other pair of framings.
#[tokio::test]
async fn transfer_encoding_after_a_bare_lf_with_content_length_is_refused() {
    both_framings_cannot_smuggle(
        b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 6\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n",
    )
    .await;
}

/// A malformed chunk after good ones (the second, the tenth): the request has reached
/// the app by then, so remora aborts it upstream and the app never receives a complete
/// request.
#[tokio::test]
async fn a_bad_later_chunk_never_completes_the_request_at_the_app() {
    for good in [1usize, 9] {
        let completed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (done, broken) = (completed.clone(), failed.clone());
        let app = serve(move |request: http::Request<hyper::body::Incoming>| {
            let (done, broken) = (done.clone(), broken.clone());
            async move {
                use http_body_util::BodyExt;
                match request.into_body().collect().await {
                    Ok(_) => done.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    Err(_) => broken.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                };
                http::Response::new(full("ok"))
            }
        })
        .await;
        let proxy = sidecar(&format!(
            "admin: {{ listen: 127.0.0.1:0 }}\n\
             inbound: {{ listen: 127.0.0.1:0, app: {app} }}\n"
        ))
        .await;
        let inbound = proxy.addrs().inbound.unwrap();
        let mut stream = TcpStream::connect(inbound).await.unwrap();
        let mut request =
            b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..good {
            request.extend_from_slice(b"5\r\nhello\r\n");
        }
        stream.write_all(&request).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Not a chunk size, then what would have ended the body.
        stream.write_all(b"zz\r\nhello\r\n0\r\n\r\n").await.unwrap();
        let _ = read_all(&mut stream, Duration::from_millis(300)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            completed.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "after {good} good chunks, the app received a complete request"
        );
        // It did receive the start of it: the abort is what kept it incomplete.
        assert_eq!(
            failed.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "after {good} good chunks"
        );
    }
}

/// What comes back for `first` bytes on a fresh connection, until the sidecar closes
/// it (or 3 s pass).
async fn answer_to(addr: std::net::SocketAddr, first: &[u8]) -> Vec<u8> {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(first).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut answer),
    )
    .await;
    answer
}

/// Whether `bytes` hold a GOAWAY frame with error PROTOCOL_ERROR.
fn has_protocol_error_goaway(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        let kind = bytes[at + 3];
        let payload = &bytes[at + 9..(at + 9 + len).min(bytes.len())];
        if kind == 0x7 && payload.len() >= 8 && payload[4..8] == [0, 0, 0, 1] {
            return true;
        }
        at += 9 + len;
    }
    false
}

/// A connection that starts as HTTP/2 (`PRI * HTTP/2.0`) but whose preface is wrong
/// gets GOAWAY(PROTOCOL_ERROR), on a port that takes HTTP/1.1 and h2c alike.
#[tokio::test]
async fn a_wrong_h2_preface_gets_goaway_protocol_error() {
    let (_proxy, addr, log) = guarded().await;
    for preface in [
        &b"PRI * HTTP/2.0\r\n\r\nXY\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r"[..],
    ] {
        let answer = answer_to(addr, preface).await;
        assert!(
            has_protocol_error_goaway(&answer),
            "{:?} got {:?}",
            String::from_utf8_lossy(preface),
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(log.len(), 0);
}

/// The same over TLS: a caller that negotiated ALPN `h2` on a mutual-TLS inbound has
/// agreed on HTTP/2, so anything but the exact preface gets GOAWAY(PROTOCOL_ERROR), an
/// HTTP/1.1 request included; the app sees none of them. The exact preface is served.
#[tokio::test]
async fn a_wrong_h2_preface_after_alpn_h2_over_tls_gets_goaway_protocol_error() {
    let (upstream, log) = recording("app").await;
    let mesh = certs::issue_mesh("example.org", &["orders", "frontend"]);
    let file = |name: &str| mesh.path().join(name).display().to_string();
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         tls: {{ cert: {}, key: {}, bundle: {} }}\n\
         inbound: {{ listen: 127.0.0.1:0, app: {upstream}, tls: strict }}\n\
         limits: {{ header_read_timeout: 1s }}\n",
        file("orders.pem"),
        file("orders-key.pem"),
        file("ca.pem"),
    ))
    .await;
    let inbound = proxy.addrs().inbound.unwrap();
    let client = tls_client(&mesh.path().join("ca.pem"), &file("frontend"), b"h2");

    for first in [
        &b"PRI * HTTP/2.0\r\n\r\nXY\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r"[..],
        &b"GET / HTTP/1.1\r\nhost: app\r\n\r\n"[..],
    ] {
        let mut tls = tls_connect(inbound, &client).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls.write_all(first).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut answer),
        )
        .await;
        assert!(read.is_ok(), "the connection stayed open after {first:?}");
        assert!(
            has_protocol_error_goaway(&answer),
            "{:?} got {:?}",
            String::from_utf8_lossy(first),
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(log.len(), 0, "the app saw {:?}", log.all());

    // A real HTTP/2 client on the same terms is served.
    let tls = tls_connect(inbound, &client).await;
    let (mut send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("https://orders/ok")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(log.len(), 1);
}

/// A client trusting `ca`, presenting `<service>.pem` and offering `alpn` only.
fn tls_client(ca: &std::path::Path, service: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(format!("{service}.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(format!("{service}-key.pem")).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(remora::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("orders").unwrap();
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .unwrap()
}
