//! The caller's side on its own: request heads, answer heads, and whole connections
//! served over real sockets by a handler that echoes what it was sent.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::head::BodyFraming;
use super::request::{parse_request, HeadError, RequestFraming};
use super::response::{encode_response, Asked};
use super::{Handler, RequestBody, ServerConnection, ServerLimits};

fn head(text: &[u8]) -> Result<super::request::RequestHead, HeadError> {
    let mut buf = BytesMut::from(text);
    parse_request(&mut buf, 8192).map(|head| head.expect("a whole head"))
}

#[test]
fn a_request_head_is_parsed_and_what_follows_stays() {
    let mut buf = BytesMut::from(
        &b"POST /a?b=1 HTTP/1.1\r\nHost: svc\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 3\r\n\r\nabcGET"[..],
    );
    let head = parse_request(&mut buf, 8192).unwrap().unwrap();
    assert_eq!(head.request.method(), Method::POST);
    assert_eq!(head.request.uri(), "/a?b=1");
    assert_eq!(head.request.version(), Version::HTTP_11);
    let values: Vec<_> = head.request.headers().get_all("x-a").iter().collect();
    assert_eq!(values, ["1", "2"]);
    assert_eq!(head.framing, RequestFraming::Length(3));
    assert!(head.keep_alive);
    assert_eq!(&buf[..], b"abcGET");
}

#[test]
fn a_head_split_anywhere_parses_the_same_once_whole() {
    let text = b"GET /x HTTP/1.1\r\nHost: svc\r\nTE: trailers\r\n\r\n";
    for split in 1..text.len() {
        let mut buf = BytesMut::from(&text[..split]);
        assert!(parse_request(&mut buf, 8192).unwrap().is_none(), "{split}");
        assert_eq!(buf.len(), split, "nothing taken at {split}");
        buf.extend_from_slice(&text[split..]);
        let head = parse_request(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(head.request.uri(), "/x");
        assert!(head.takes_trailers);
        assert!(buf.is_empty());
    }
}

#[test]
fn ambiguous_framing_is_refused() {
    for text in [
        &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    ] {
        let refused = head(text).unwrap_err();
        assert!(
            matches!(refused, HeadError::Malformed(_)),
            "{:?}: {refused}",
            String::from_utf8_lossy(text)
        );
    }
}

#[test]
fn framing_and_keep_alive_follow_the_version_and_headers() {
    let same_lengths = head(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n");
    assert_eq!(same_lengths.unwrap().framing, RequestFraming::Length(3));
    let chunked = head(b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap();
    assert_eq!(chunked.framing, RequestFraming::Chunked);
    let none = head(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert_eq!(none.framing, RequestFraming::Empty);

    assert!(
        !head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .keep_alive
    );
    assert!(!head(b"GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
    assert!(
        head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .keep_alive
    );

    let expect = b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
    assert!(head(expect).unwrap().expects_continue);
    let bodiless = head(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").unwrap();
    assert!(!bodiless.expects_continue, "nothing to wait for");
    let old = head(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
    assert!(!old.unwrap().expects_continue, "HTTP/1.0 has no 100");
}

#[test]
fn a_head_over_the_limit_or_with_too_many_fields_is_too_large() {
    let mut long = b"GET / HTTP/1.1\r\nx: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9000));
    let mut buf = BytesMut::from(&long[..]);
    assert_eq!(
        parse_request(&mut buf, 8192).unwrap_err(),
        HeadError::TooLarge
    );
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..101 {
        many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(head(&many).unwrap_err(), HeadError::TooLarge);
}

/// The head `encode_response` writes for `response`, and its plan.
fn answer(response: Response<Full<Bytes>>, asked: Asked) -> (String, BodyFraming, bool) {
    let (parts, body) = response.into_parts();
    let mut out = BytesMut::new();
    let plan = encode_response(&parts, &body, asked, &mut out);
    let text = String::from_utf8(out.to_vec()).unwrap();
    (text, plan.framing, plan.keep_alive)
}

const ASKED: Asked = Asked {
    head_request: false,
    version: Version::HTTP_11,
    keep_alive: true,
    takes_trailers: false,
};

#[test]
fn an_answer_says_its_length_or_goes_chunked_or_until_close() {
    let (text, framing, keep) = answer(Response::new(Full::from("hello")), ASKED);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: 5\r\n"), "{text}");
    assert!(text.contains("\r\ndate: "), "{text}");
    assert!(text.ends_with("\r\n\r\n"));
    assert_eq!((framing, keep), (BodyFraming::Length(5), true));

    let declared = Response::builder()
        .status(404)
        .header("content-length", "5")
        .header("date", "Mon, 07 Dec 2026 00:00:00 GMT")
        .header("connection", "x-hop")
        .header("transfer-encoding", "chunked")
        .body(Full::from("hello"))
        .unwrap();
    let (text, framing, _) = answer(declared, ASKED);
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
    assert_eq!(text.matches("content-length").count(), 1, "{text}");
    assert_eq!(text.matches("date").count(), 1, "{text}");
    assert!(
        !text.contains("x-hop") && !text.contains("transfer-encoding"),
        "{text}"
    );
    assert_eq!(framing, BodyFraming::Length(5));

    let unknown = Response::new(Unknown);
    let (parts, body) = unknown.into_parts();
    let mut out = BytesMut::new();
    let plan = encode_response(&parts, &body, ASKED, &mut out);
    assert_eq!(plan.framing, BodyFraming::Chunked { trailers: false });
    assert!(std::str::from_utf8(&out)
        .unwrap()
        .contains("transfer-encoding: chunked\r\n"));
    let old = Asked {
        version: Version::HTTP_10,
        ..ASKED
    };
    let mut out = BytesMut::new();
    let plan = encode_response(&parts, &body, old, &mut out);
    assert_eq!(
        (plan.framing, plan.keep_alive),
        (BodyFraming::UntilClose, false)
    );
    assert!(std::str::from_utf8(&out)
        .unwrap()
        .contains("connection: close\r\n"));
}

/// A body that does not know its length.
struct Unknown;

impl http_body::Body for Unknown {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(None)
    }
}

#[test]
fn bodiless_answers_keep_or_drop_their_length_as_the_rules_say() {
    let head_asked = Asked {
        head_request: true,
        ..ASKED
    };
    let with_length = || {
        Response::builder()
            .header("content-length", "42")
            .body(Full::from(""))
            .unwrap()
    };
    let (text, framing, _) = answer(with_length(), head_asked);
    assert!(text.contains("content-length: 42\r\n"), "{text}");
    assert_eq!(framing, BodyFraming::Empty);
    let mut no_content = with_length();
    *no_content.status_mut() = StatusCode::NO_CONTENT;
    let (text, framing, _) = answer(no_content, ASKED);
    assert!(!text.contains("content-length"), "{text}");
    assert_eq!(framing, BodyFraming::Empty);

    let upgrade = Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::from(""))
        .unwrap();
    let (text, _, keep) = answer(upgrade, ASKED);
    assert!(text.contains("connection: upgrade\r\n"), "{text}");
    assert!(!keep, "the connection leaves HTTP");
}

#[test]
fn the_connection_header_says_what_the_server_does() {
    let closing = Asked {
        keep_alive: false,
        ..ASKED
    };
    let (text, _, keep) = answer(Response::new(Full::from("")), closing);
    assert!(text.contains("connection: close\r\n") && !keep, "{text}");
    let old_kept = Asked {
        version: Version::HTTP_10,
        ..ASKED
    };
    let (text, _, keep) = answer(Response::new(Full::from("")), old_kept);
    assert!(
        text.contains("connection: keep-alive\r\n") && keep,
        "{text}"
    );
    let said_close = Response::builder()
        .header("connection", "close")
        .body(Full::from(""))
        .unwrap();
    let (text, _, keep) = answer(said_close, ASKED);
    assert!(text.contains("connection: close\r\n") && !keep, "{text}");
}

/// Answers every request with its method, target and body, read whole; `/early`
/// answers without reading the body; `/slow` waits 200 ms first.
#[derive(Clone)]
struct Echo;

impl Handler for Echo {
    type Body = Full<Bytes>;
    type Future = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        Box::pin(async move {
            let path = request.uri().path().to_string();
            if path == "/early" {
                return Response::builder()
                    .status(413)
                    .body(Full::from("no"))
                    .unwrap();
            }
            if path == "/slow" {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if path == "/forever" {
                // Says when the call is dropped (its caller left).
                let _dropped = request.extensions().get::<Dropped>().cloned();
                let _guard = DropGuard(_dropped);
                std::future::pending::<()>().await;
            }
            let method = request.method().to_string();
            let body = match request.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(error) => {
                    return Response::builder()
                        .status(400)
                        .body(Full::from(error.to_string()))
                        .unwrap()
                }
            };
            let text = format!("{method} {path} {}", String::from_utf8_lossy(&body));
            Response::new(Full::from(text))
        })
    }
}

/// A sender told when a `/forever` call is dropped.
#[derive(Clone)]
struct Dropped(tokio::sync::mpsc::UnboundedSender<()>);

struct DropGuard(Option<Dropped>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(Dropped(sender)) = self.0.take() {
            let _ = sender.send(());
        }
    }
}

const LIMITS: ServerLimits = ServerLimits {
    header_read_timeout: Duration::from_millis(300),
    max_head_bytes: 8192,
    half_close: false,
};

/// A listener whose connections the echo handler serves; `draining` asks every
/// connection to shut down gracefully once it is told.
async fn echo_server() -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (drain, watch) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut watch = watch.clone();
            tokio::spawn(async move {
                let mut connection = std::pin::pin!(ServerConnection::new(stream, Echo, LIMITS));
                loop {
                    tokio::select! {
                        _ = connection.as_mut() => return,
                        changed = watch.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            });
        }
    });
    (addr, drain)
}

/// Everything the server writes until it closes the connection (5 s at most).
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all))
        .await
        .expect("the server closes")
        .unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

/// Reads until `count` answers' heads and `content-length` bodies came.
async fn read_answers(stream: &mut TcpStream, count: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    while answers.len() < count {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(read > 0, "closed after {answers:?}");
        buf.extend_from_slice(&chunk[..read]);
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            let Some(end) = text.find("\r\n\r\n") else {
                break;
            };
            let length = text[..end]
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .map_or(0, |value| value.parse::<usize>().unwrap());
            if buf.len() < end + 4 + length {
                break;
            }
            answers.push(text[..end + 4 + length].to_string());
            buf.drain(..end + 4 + length);
        }
    }
    answers
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (addr, _drain) = echo_server().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
              POST /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let answers = read_answers(&mut stream, 3).await;
    assert!(answers[0].ends_with("GET /one "), "{answers:?}");
    assert!(answers[1].ends_with("POST /two hello"), "{answers:?}");
    assert!(answers[2].ends_with("POST /three abcde"), "{answers:?}");
    // And the connection still serves.
    stream
        .write_all(b"GET /four HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert!(read_answers(&mut stream, 1).await[0].ends_with("GET /four "));
}

#[tokio::test]
async fn an_answer_before_the_body_is_read_closes_the_connection_and_says_so() {
    let (addr, _drain) = echo_server().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /early HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\n\r\n",
        )
        .await
        .unwrap();
    let all = read_to_close(&mut stream).await;
    assert!(all.starts_with("HTTP/1.1 413"), "{all}");
    assert!(all.contains("connection: close\r\n"), "{all}");
    assert_eq!(all.matches("HTTP/1.1").count(), 1, "nothing after: {all}");
}

#[tokio::test]
async fn continue_is_sent_when_the_body_is_first_read() {
    let (addr, _drain) = echo_server().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /e HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut interim))
        .await
        .expect("100 Continue within 5 s")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    assert!(read_answers(&mut stream, 1).await[0].ends_with("POST /e hello"));

    // An early answer sends no 100, and closes.
    stream
        .write_all(b"POST /early HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let all = read_to_close(&mut stream).await;
    assert!(all.starts_with("HTTP/1.1 413"), "{all}");
}

#[tokio::test]
async fn a_broken_body_fails_the_request_and_the_connection_closes() {
    let (addr, _drain) = echo_server().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /smuggled HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let all = read_to_close(&mut stream).await;
    assert!(all.starts_with("HTTP/1.1 400"), "{all}");
    assert!(!all.contains("smuggled"), "{all}");
}

#[tokio::test]
async fn refused_heads_get_their_status_and_the_connection_closes() {
    let (addr, _drain) = echo_server().await;
    for (request, status) in [
        (&b"GARBAGE\r\n\r\n"[..], "400"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "400",
        ),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let all = read_to_close(&mut stream).await;
        assert!(all.starts_with(&format!("HTTP/1.1 {status}")), "{all}");
        assert!(all.contains("connection: close\r\n"), "{all}");
    }
}

#[tokio::test]
async fn a_head_that_does_not_come_in_time_closes_the_connection() {
    let (addr, _drain) = echo_server().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a")
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut stream).await, "");

    // Between requests too: an idle keep-alive connection goes after the timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
    read_answers(&mut idle, 1).await;
    let started = std::time::Instant::now();
    assert_eq!(read_to_close(&mut idle).await, "");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_drain_closes_idle_connections_and_finishes_the_exchange_in_flight() {
    let (addr, drain) = echo_server().await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
    read_answers(&mut idle, 1).await;
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drain.send(true).unwrap();
    assert_eq!(read_to_close(&mut idle).await, "");
    let all = read_to_close(&mut busy).await;
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.contains("connection: close\r\n"), "{all}");
    assert!(all.ends_with("GET /slow "), "{all}");
}

/// Echo, but a `/forever` call carries a sender that says when the call is dropped.
struct Telling(tokio::sync::mpsc::UnboundedSender<()>);

impl Handler for Telling {
    type Body = Full<Bytes>;
    type Future = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        request.extensions_mut().insert(Dropped(self.0.clone()));
        Echo.call(request)
    }
}

#[tokio::test]
async fn a_caller_that_hangs_up_mid_call_cancels_the_call() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sender, mut dropped) = tokio::sync::mpsc::unbounded_channel();
    let served = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        ServerConnection::new(stream, Telling(sender), LIMITS).await
    });
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /forever HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        dropped.try_recv().is_err(),
        "the call runs while its caller waits"
    );
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), dropped.recv())
        .await
        .expect("the call is dropped once its caller left")
        .expect("told");
    let ended = tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the connection ends")
        .unwrap();
    assert!(
        matches!(ended, Err(super::ServeError::CallerLeft)),
        "{ended:?}"
    );
}

#[tokio::test]
async fn a_long_body_arrives_whole_across_reads_of_every_size() {
    let (addr, _drain) = echo_server().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let head = format!(
        "POST /long HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // In pieces of several sizes, some larger than a read on the stack takes.
    for piece in body.chunks(7_001) {
        stream.write_all(piece).await.unwrap();
    }
    let answer = read_answers(&mut stream, 1).await.remove(0);
    let echoed = answer.split_once("POST /long ").unwrap().1;
    assert_eq!(echoed.len(), body.len());
    assert!(echoed.as_bytes() == &body[..], "the body came back changed");
    // And the connection serves the next request.
    stream
        .write_all(b"GET /after HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert!(read_answers(&mut stream, 1).await[0].ends_with("GET /after "));
}
