//! An upstream that fails in the middle of an answer: the caller must never take a
//! truncated answer for a whole one, and nothing may hang.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// An HTTP/1.1 upstream that answers every request with `head` then `body` bytes, and
/// closes the connection.
async fn lying_upstream(head: &'static str, body: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// What a raw HTTP/1.1 client gets for one GET through `proxy`'s service port, until
/// the sidecar closes the connection or 5 s pass (`None`: it never did).
async fn raw_answer(proxy: &remora::Sidecar) -> Option<Vec<u8>> {
    let addr = proxy.addrs().service("svc").unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    Some(answer)
}

fn proxy_yaml(upstream: SocketAddr) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n"
    )
}

/// What a caller reads through a sidecar whose upstream answers `head` then `body`,
/// then closes.
async fn answer_from_lying_upstream(head: &'static str, body: &'static [u8]) -> String {
    let upstream = lying_upstream(head, body).await;
    let proxy = sidecar(&proxy_yaml(upstream)).await;
    let answer = raw_answer(&proxy)
        .await
        .expect("the sidecar closed the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

/// An upstream that promises 100 bytes and sends 10: the caller's connection is cut
/// before a complete answer, so its client sees a truncated body (or, when the cut was
/// read before the answer's head went out, no answer at all), never a whole one.
#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_never_passed_off_as_whole() {
    let text = answer_from_lying_upstream(
        "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
        b"0123456789",
    )
    .await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if head.starts_with("HTTP/1.1 200") {
        assert!(
            head.to_ascii_lowercase().contains("content-length: 100")
                || head
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked"),
            "{head}"
        );
        // Framed as 100 bytes (or chunked): fewer than framed, then the close.
        assert!(body.len() < 100 && !body.ends_with("0\r\n\r\n"), "{text:?}");
    } else {
        assert!(
            text.is_empty() || head.starts_with("HTTP/1.1 502"),
            "{text:?}"
        );
    }
}

/// A chunked answer that stops without its last chunk: the caller never gets the
/// terminating chunk.
#[tokio::test]
async fn a_chunked_body_cut_short_never_gets_its_last_chunk() {
    let text = answer_from_lying_upstream(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
    )
    .await;
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a clean end after a cut: {text:?}"
    );
}

/// An upstream that closes a pooled idle connection: the next call gets a fresh
/// connection (or a retry), not an error.
#[tokio::test]
async fn an_upstream_closing_an_idle_pooled_connection_fails_no_call() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Keep-alive promised, then closed once idle.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    let proxy = sidecar(&proxy_yaml(upstream)).await;
    let url = format!("http://{}/", proxy.addrs().service("svc").unwrap());
    for _ in 0..5 {
        let (status, _, body) = get(&url).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
