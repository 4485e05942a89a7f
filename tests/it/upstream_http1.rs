//! remora's own HTTP/1.1 client toward an upstream (`src/core/http1/`), driven through a
//! real sidecar against upstreams that write fixed bytes: interim answers, the ways an
//! answer's body ends (a length, chunks, the close), when a connection is used again
//! and when it must not be, early answers and bodies streaming both ways at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// The longest any call of these tests may take: past it, the test fails.
const LIMIT: Duration = Duration::from_secs(10);

/// A request as the raw upstream read it.
struct Asked {
    /// The connection it came on, counted from 0 in the order they were accepted.
    connection: usize,
    /// Its place among the requests of its connection, from 0.
    on_connection: usize,
    /// The request line and headers, as text.
    head: String,
}

/// What the raw upstream writes back for one request.
struct Reply {
    /// Written one after another, with a short pause between, so that they tend to
    /// arrive in separate reads.
    pieces: Vec<Vec<u8>>,
    /// Whether the upstream closes the connection after the last piece.
    close: bool,
}

impl Reply {
    /// `bytes` in one write; the connection stays open.
    fn keep(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            pieces: vec![bytes.into()],
            close: false,
        }
    }

    /// `pieces` written apart; the connection stays open.
    fn pieces(pieces: &[&[u8]]) -> Self {
        Self {
            pieces: pieces.iter().map(|piece| piece.to_vec()).collect(),
            close: false,
        }
    }

    /// An HTTP/1.1 `200` carrying `body` with its length.
    fn ok(body: &str) -> Self {
        Self::keep(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ))
    }
}

/// An upstream speaking HTTP/1.1 from fixed bytes, and the connections it accepted.
struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl RawUpstream {
    /// An upstream that, for each request it reads (a head, then a body of its
    /// `content-length`), writes what `answer` gives; it serves any number of requests on
    /// a connection until `answer` says to close or the sidecar does.
    async fn start<F>(answer: F) -> Self
    where
        F: Fn(&Asked) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_raw(stream, connection, answer.clone()));
            }
        });
        Self { addr, accepted }
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Serves one connection of a [`RawUpstream`].
async fn serve_raw<F>(mut stream: TcpStream, connection: usize, answer: Arc<F>)
where
    F: Fn(&Asked) -> Reply + Send + Sync + 'static,
{
    let mut buf = Vec::new();
    for on_connection in 0.. {
        let Some(head) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let reply = answer(&Asked {
            connection,
            on_connection,
            head,
        });
        for (index, piece) in reply.pieces.iter().enumerate() {
            if index > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if stream.write_all(piece).await.is_err() {
                return;
            }
        }
        if reply.close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Reads one request off `stream` (what is left of `buf` first): its head as text, its
/// body (of its `content-length`, none without) skipped; `None` once the peer closed.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let end = loop {
        if let Some(at) = buf.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        read_more(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, value)| value.trim().parse::<usize>().unwrap());
    while buf.len() < length {
        read_more(stream, buf).await?;
    }
    buf.drain(..length);
    Some(head)
}

/// Appends what `stream` has to `buf`; `None` at its end or on an error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(read) => {
            buf.extend_from_slice(&chunk[..read]);
            Some(())
        }
    }
}

/// A sidecar whose service `svc` speaks HTTP/1.1 to `upstream`.
async fn proxy_to(upstream: SocketAddr) -> remora::Sidecar {
    sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    protocol: http1\n    endpoints: [{upstream}]\n"
    ))
    .await
}

/// GET `path` of `svc` through `proxy` on a connection of its own: status, headers and
/// body text. Fails the test past [`LIMIT`].
async fn call(proxy: &remora::Sidecar, path: &str) -> (u16, http::HeaderMap, String) {
    let svc = proxy.addrs().service("svc").unwrap();
    let (status, headers, body) = tokio::time::timeout(LIMIT, get(&format!("http://{svc}{path}")))
        .await
        .expect("the call ends");
    (status.as_u16(), headers, body)
}

/// The body of a call that must succeed.
async fn ok_body(proxy: &remora::Sidecar, path: &str) -> String {
    let (status, _, body) = call(proxy, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// What a raw client reads for one GET through `proxy` (asking to close after it),
/// until the sidecar closes the connection. Fails the test when it has not closed it
/// within [`LIMIT`].
async fn raw_get_until_close(proxy: &remora::Sidecar) -> String {
    let svc = proxy.addrs().service("svc").unwrap();
    let mut client = TcpStream::connect(svc).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, client.read_to_end(&mut answer))
        .await
        .expect("the sidecar closes the connection of a cut answer")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// `100 Continue` and `103 Early Hints` before the answer (unasked: the sidecar sends no
/// `expect`): the caller gets the real answer, without the hints' headers, and the
/// connection serves the next call.
#[tokio::test]
async fn interim_answers_are_skipped_and_the_real_answer_reaches_the_caller() {
    let upstream = RawUpstream::start(|asked| match asked.on_connection {
        0 => Reply::pieces(&[
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nreal",
        ]),
        _ => Reply::ok("again"),
    })
    .await;
    let proxy = proxy_to(upstream.addr).await;

    let (status, headers, body) = call(&proxy, "/").await;
    assert_eq!((status, body.as_str()), (200, "real"));
    assert!(!headers.contains_key("link"), "{headers:?}");
    assert_eq!(ok_body(&proxy, "/").await, "again");
    assert_eq!(upstream.accepted(), 1, "the connection was used again");
}

/// An HTTP/1.0 upstream without `content-length`: its body runs to the close, and the
/// caller gets all of it; the next call goes on a new connection.
#[tokio::test]
async fn an_http10_body_delimited_by_the_close_arrives_whole() {
    const PIECE: usize = 64 * 1024;
    let piece = |index: usize| vec![b'a' + index as u8; PIECE];
    let upstream = RawUpstream::start(move |_| Reply {
        pieces: [
            b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n".to_vec(),
            piece(0),
            piece(1),
            piece(2),
        ]
        .into(),
        close: true,
    })
    .await;
    let proxy = proxy_to(upstream.addr).await;
    let expected: String = (0..3)
        .map(|index| String::from_utf8(piece(index)).unwrap())
        .collect();

    for call_number in 1..=2 {
        let body = ok_body(&proxy, "/").await;
        assert_eq!(body.len(), expected.len(), "call {call_number}");
        assert!(body == expected, "call {call_number}: the body differs");
    }
    assert_eq!(
        upstream.accepted(),
        2,
        "one connection per close-delimited answer"
    );
}

/// An answer saying `connection: close` (with a length) arrives whole, and the
/// connection is not used again: this upstream leaves it open, and answers a request
/// that comes on it anyway with a `500`.
#[tokio::test]
async fn an_answer_saying_connection_close_ends_the_connection() {
    let upstream = RawUpstream::start(|asked| match asked.on_connection {
        0 => Reply::keep(format!(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 11\r\n\r\nanswer-{}",
            asked.connection + 1000
        )),
        _ => Reply::keep("HTTP/1.1 500 Reused\r\ncontent-length: 6\r\n\r\nreused"),
    })
    .await;
    let proxy = proxy_to(upstream.addr).await;

    assert_eq!(ok_body(&proxy, "/").await, "answer-1000");
    assert_eq!(ok_body(&proxy, "/").await, "answer-1001");
    assert_eq!(upstream.accepted(), 2);
}

/// Sequential calls, each from a connection of its own to the sidecar, share one
/// upstream connection, whatever framing each answer has: a length, chunks, chunks with
/// trailers, `204`, an empty length, a body written apart from its head.
#[tokio::test]
async fn sequential_calls_reuse_one_upstream_connection_across_framings() {
    let upstream = RawUpstream::start(|asked| match asked.on_connection {
        0 => Reply::ok("one"),
        1 => Reply::keep(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n",
        ),
        2 => Reply::keep(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
             5\r\nthree\r\n0\r\nx-sum: 5\r\n\r\n",
        ),
        3 => Reply::keep("HTTP/1.1 204 No Content\r\n\r\n"),
        4 => Reply::ok(""),
        5 => Reply::pieces(&[b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n", b"six!"]),
        _ => Reply::ok("more"),
    })
    .await;
    let proxy = proxy_to(upstream.addr).await;

    for expected in ["one", "two", "three"] {
        assert_eq!(ok_body(&proxy, "/").await, expected);
    }
    let (status, _, body) = call(&proxy, "/").await;
    assert_eq!((status, body.as_str()), (204, ""));
    for expected in ["", "six!", "more", "more"] {
        assert_eq!(ok_body(&proxy, "/").await, expected);
    }
    assert_eq!(
        upstream.accepted(),
        1,
        "one upstream connection for 8 calls"
    );
}

/// An upstream that writes a second answer after the one asked for: the caller gets
/// the first, and the stray second answer never reaches the next call, which goes on a
/// new connection.
#[tokio::test]
async fn bytes_past_the_answer_are_never_taken_for_the_next_answer() {
    let upstream = RawUpstream::start(|asked| match (asked.connection, asked.on_connection) {
        // One write: the stray answer is in the sidecar's socket with the real one.
        (0, 0) => Reply::keep(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst\
             HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray",
        ),
        _ => Reply::ok("fresh"),
    })
    .await;
    let proxy = proxy_to(upstream.addr).await;

    assert_eq!(ok_body(&proxy, "/").await, "first");
    assert_eq!(ok_body(&proxy, "/").await, "fresh");
    assert_eq!(ok_body(&proxy, "/").await, "fresh");
    assert_eq!(
        upstream.accepted(),
        2,
        "the connection that said too much is closed; the next one is kept"
    );
}

/// The answer to `HEAD` has no body whatever its `content-length` says: the caller gets
/// the head, and the connection serves the next call's answer, body and all.
#[tokio::test]
async fn a_head_answer_with_a_content_length_has_no_body() {
    let upstream = RawUpstream::start(|asked| {
        if asked.head.starts_with("HEAD ") {
            Reply::keep("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
        } else {
            Reply::keep("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789")
        }
    })
    .await;
    let proxy = proxy_to(upstream.addr).await;
    let svc = proxy.addrs().service("svc").unwrap();

    for _ in 0..2 {
        let request = Request::head(format!("http://{svc}/"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(LIMIT, http1_client().request(request))
            .await
            .expect("the HEAD call ends")
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-length"], "10");
        let body = tokio::time::timeout(LIMIT, response.into_body().collect())
            .await
            .expect("the HEAD answer's body ends at once")
            .unwrap()
            .to_bytes();
        assert!(body.is_empty());
        assert_eq!(ok_body(&proxy, "/").await, "0123456789");
    }
    assert_eq!(upstream.accepted(), 1, "HEAD left the connection reusable");
}

/// An upstream that answers `413` (with a length) to a large request after reading its
/// head only, then closes: the caller, still sending, gets the `413`, and nothing hangs.
#[tokio::test]
async fn an_early_answer_to_a_large_request_body_reaches_the_caller() {
    const ANSWER: &[u8] =
        b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 8\r\n\r\ntoo big!";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while !buf.windows(4).any(|window| window == b"\r\n\r\n") {
                    if read_more(&mut stream, &mut buf).await.is_none() {
                        return;
                    }
                }
                let _ = stream.write_all(ANSWER).await;
                // Closed with the body unread: the kernel resets the connection.
            });
        }
    });
    let proxy = proxy_to(upstream).await;
    let svc = proxy.addrs().service("svc").unwrap();

    let client = TcpStream::connect(svc).await.unwrap();
    let (mut reader, mut writer) = client.into_split();
    // 16 MiB announced, sent in pieces for as long as the sidecar reads them.
    let sending = tokio::spawn(async move {
        let head = "POST /upload HTTP/1.1\r\nhost: svc\r\ncontent-length: 16777216\r\n\r\n";
        writer.write_all(head.as_bytes()).await?;
        let piece = vec![b'x'; 64 * 1024];
        for _ in 0..256 {
            writer.write_all(&piece).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(LIMIT, async {
        let mut chunk = [0u8; 8192];
        while !answer.ends_with(b"too big!") {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(count) => answer.extend_from_slice(&chunk[..count]),
            }
        }
    })
    .await;
    sending.abort();
    read.expect("the caller gets an answer while it is still sending");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(answer.ends_with("\r\n\r\ntoo big!"), "{answer}");
}

/// An upstream that streams the request's body back as its answer, at once: the caller
/// sends a first part, reads it back, then sends the second and reads that back too.
/// Neither side waits for the other's end: the sidecar writes the request body while
/// it reads the answer.
#[tokio::test]
async fn a_request_body_and_its_echo_stream_both_ways_at_once() {
    let upstream = serve(|request: Request<Incoming>| async move {
        Response::new(request.into_body().map_err(Into::into).boxed())
    })
    .await;
    let proxy = proxy_to(upstream).await;
    let svc = proxy.addrs().service("svc").unwrap();

    let (parts, body) = channel_body();
    let request = Request::post(format!("http://{svc}/echo"))
        .body(body)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<TestBody>();
    let response = tokio::spawn(client.request(request));
    parts
        .send(Ok(Frame::data(Bytes::from_static(b"ping;"))))
        .await
        .unwrap();
    let response = tokio::time::timeout(LIMIT, response)
        .await
        .expect("the answer's head comes before the request's body ends")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut echo = response.into_body();
    let first = next_data(&mut echo).await;
    assert_eq!(
        first, "ping;",
        "the first part comes back before the second is sent"
    );

    parts
        .send(Ok(Frame::data(Bytes::from_static(b"pong"))))
        .await
        .unwrap();
    let second = next_data(&mut echo).await;
    assert_eq!(second, "pong");
    drop(parts);
    let rest = tokio::time::timeout(LIMIT, echo.collect())
        .await
        .expect("the echo ends once the request's body does")
        .unwrap()
        .to_bytes();
    assert!(rest.is_empty(), "{rest:?}");
}

/// The next data frame of `body`; fails the test when none comes within [`LIMIT`].
async fn next_data(body: &mut Incoming) -> Bytes {
    loop {
        let frame = tokio::time::timeout(LIMIT, body.frame())
            .await
            .expect("a frame comes")
            .expect("the body has not ended")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            if !data.is_empty() {
                return data;
            }
        }
    }
}

/// A chunked answer whose second chunk size is not hex: the caller's answer is cut
/// (the sidecar closes the connection), never ended with a last chunk, and nothing past
/// the bad size is passed on. The upstream leaves its connection open: the sidecar stops
/// on the framing itself, not on a close.
#[tokio::test]
async fn a_malformed_chunk_size_cuts_the_answer() {
    let upstream = RawUpstream::start(|_| {
        Reply::pieces(&[
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"zz\r\nworld\r\n0\r\n\r\n",
        ])
    })
    .await;
    let proxy = proxy_to(upstream.addr).await;

    let text = raw_get_until_close(&proxy).await;
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a clean end after a bad chunk: {text:?}"
    );
    assert!(!text.contains("world"), "{text:?}");
    // The head and the first chunk may have gone out before the bad size came (a 200
    // then the close), or not (nothing but the close, or a 502).
    let status = status_of(&text);
    assert!(
        text.is_empty() || status == 200 || status == 502,
        "{text:?}"
    );
}

/// A `101 Switching Protocols` to a GET that asked no upgrade is a `502`, and the
/// connection is not used again.
#[tokio::test]
async fn an_unasked_switch_of_protocols_is_a_502() {
    let upstream = RawUpstream::start(|asked| match asked.connection {
        0 => Reply::keep(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: other\r\n\r\n",
        ),
        _ => Reply::ok("plain"),
    })
    .await;
    let proxy = proxy_to(upstream.addr).await;

    let (status, headers, body) = call(&proxy, "/").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(headers["x-remora-error"], "upstream-reset");
    assert_eq!(ok_body(&proxy, "/").await, "plain");
    assert_eq!(upstream.accepted(), 2);
}
