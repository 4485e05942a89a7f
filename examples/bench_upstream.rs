//! The benchmark's fixed-response upstream, and its idle-connection holder.
//!
//! `bench_upstream serve PORT` answers every request on `127.0.0.1:PORT`, HTTP/1.1 and
//! h2c (prior knowledge) alike, without reading a file or allocating per byte: a plain
//! request gets 200 with a 64-byte body; a gRPC request (`content-type:
//! application/grpc`) gets a unary `EchoReply` frame and `grpc-status: 0` trailers.
//! It runs on a current-thread runtime unless `BENCH_UPSTREAM_THREADS` asks for more
//! workers (the benchmark pins it to one core either way).
//!
//! For big bodies (`scripts/big-bodies.sh`), both streamed, never held whole: `GET
//! /bytes/N` answers N zero bytes (with their `content-length`), and `/discard` reads the
//! request body to its end and answers `received N` (its length).
//!
//! `bench_upstream hold ADDR COUNT SECONDS` opens `COUNT` HTTP/1.1 keep-alive
//! connections to `ADDR`, sends one request on each, prints `ready` once every answer
//! arrived, then keeps them open and idle for `SECONDS` (or until killed). `bench/run.sh`
//! reads a proxy's memory while they are held.
//!
//! `bench_upstream crowd ADDR COUNT SECONDS` opens `COUNT` such connections at once (a
//! few hundred connecting at a time) and tolerates refusals: it prints one line,
//! `answered=A refused=R other_status=S failed=F` (refused: closed or reset before any
//! answer; other_status: answered but not 200), then `ready`, and holds the answered
//! ones idle for `SECONDS`. `scripts/many-connections.sh` runs it against a capped
//! listener.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prost::Message;
use remora::echo::EchoReply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The plain answer: 64 bytes, so that bodies cost next to nothing on every path.
const PLAIN_BODY: &[u8; 64] = b"remora bench upstream: a fixed 64-byte answer for every request\n";

type ReplyBody = BoxBody<Bytes, Infallible>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", port] => parse_port(port).and_then(serve),
        ["hold", addr, count, seconds] => parse_hold(addr, count, seconds)
            .and_then(|(addr, count, seconds)| hold(addr, count, seconds)),
        ["crowd", addr, count, seconds] => parse_hold(addr, count, seconds)
            .and_then(|(addr, count, seconds)| crowd(addr, count, seconds)),
        _ => Err(
            "usage: bench_upstream serve PORT | hold ADDR COUNT SECONDS | crowd ADDR COUNT SECONDS"
                .to_string(),
        ),
    };
    if let Err(message) = outcome {
        eprintln!("bench_upstream: {message}");
        std::process::exit(2);
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    port.parse().map_err(|e| format!("port {port:?}: {e}"))
}

fn parse_hold(addr: &str, count: &str, seconds: &str) -> Result<(SocketAddr, usize, u64), String> {
    let addr = addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?;
    let count = count.parse().map_err(|e| format!("count {count:?}: {e}"))?;
    let seconds = seconds
        .parse()
        .map_err(|e| format!("seconds {seconds:?}: {e}"))?;
    Ok((addr, count, seconds))
}

/// A runtime of `BENCH_UPSTREAM_THREADS` workers; a current-thread one when unset or 1.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    let threads: usize = std::env::var("BENCH_UPSTREAM_THREADS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1);
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

fn serve(port: u16) -> Result<(), String> {
    runtime()?.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http2().max_concurrent_streams(1024);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors: wait for some to close.
                    eprintln!("bench_upstream: accept: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let connection = builder
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                .into_owned();
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    })
}

async fn answer(request: Request<Incoming>) -> Result<Response<ReplyBody>, Infallible> {
    let grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = request.uri().path().to_string();
    // Read the request to its end so that HTTP/1 connections stay reusable.
    let received = discard(request.into_body()).await;
    if grpc {
        return Ok(grpc_reply());
    }
    if path == "/discard" {
        let text = format!("received {received}\n");
        return Ok(Response::new(Full::new(Bytes::from(text)).boxed()));
    }
    if let Some(size) = path.strip_prefix("/bytes/").and_then(|n| n.parse().ok()) {
        return Ok(zeros(size));
    }
    let mut response = Response::new(Full::new(Bytes::from_static(PLAIN_BODY)).boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

/// Reads `body` to its end, a frame at a time; returns its length.
async fn discard(mut body: Incoming) -> u64 {
    let mut received = 0;
    while let Some(Ok(frame)) = body.frame().await {
        received += frame.data_ref().map_or(0, |data| data.len() as u64);
    }
    received
}

/// The chunk `/bytes/N` answers are made of.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// `size` zero bytes, streamed in 64 KiB chunks.
fn zeros(size: u64) -> Response<ReplyBody> {
    let chunks = stream::unfold(size, |left| async move {
        let n = left.min(ZEROS.len() as u64);
        (n > 0).then(|| {
            let chunk = Bytes::from_static(&ZEROS[..n as usize]);
            (Ok(Frame::data(chunk)), left - n)
        })
    });
    let mut response = Response::new(StreamBody::new(chunks).boxed());
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(size));
    response
}

/// A unary gRPC answer: one length-prefixed `EchoReply`, then `grpc-status: 0`.
fn grpc_reply() -> Response<ReplyBody> {
    let reply = EchoReply {
        message: "hello".to_string(),
        payload: Vec::new(),
        instance: "bench".to_string(),
    };
    let encoded = reply.encode_to_vec();
    let length = u32::try_from(encoded.len()).unwrap_or(u32::MAX);
    let mut framed = Vec::with_capacity(5 + encoded.len());
    framed.push(0); // not compressed
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(&encoded);

    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: [Result<Frame<Bytes>, Infallible>; 2] = [
        Ok(Frame::data(Bytes::from(framed))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = Response::new(StreamBody::new(stream::iter(frames)).boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

fn hold(addr: SocketAddr, count: usize, seconds: u64) -> Result<(), String> {
    runtime()?.block_on(async move {
        let mut held = Vec::with_capacity(count);
        // One at a time: the proxy sees `count` client connections but needs only one
        // upstream connection, so the growth measured is the client side's.
        for index in 0..count {
            let stream = one_request(addr)
                .await
                .map_err(|e| format!("connection {index} to {addr}: {e}"))?;
            held.push(stream);
        }
        println!("ready");
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        drop(held);
        Ok(())
    })
}

/// How one connection of a crowd ended up.
enum Member {
    /// Answered: the status, and the connection, kept open.
    Answered(u16, TcpStream),
    /// Closed or reset before any answer: refused at accept.
    Refused,
    /// Anything else (connect failed, timed out): the error.
    Failed(std::io::Error),
}

/// Connections opening at once in a crowd: more would overflow the listen backlog.
const CROWD_CONNECTING: usize = 256;

fn crowd(addr: SocketAddr, count: usize, seconds: u64) -> Result<(), String> {
    runtime()?.block_on(async move {
        let connecting = std::sync::Arc::new(tokio::sync::Semaphore::new(CROWD_CONNECTING));
        let mut members = tokio::task::JoinSet::new();
        for _ in 0..count {
            let permit = connecting
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            members.spawn(async move {
                let member = crowd_member(addr).await;
                drop(permit);
                member
            });
        }
        let (mut held, mut refused, mut other_status, mut failed) = (Vec::new(), 0, 0, 0);
        let mut first_failure = None;
        while let Some(member) = members.join_next().await {
            match member.map_err(|e| format!("connection task: {e}"))? {
                Member::Answered(200, stream) => held.push(stream),
                Member::Answered(_, stream) => {
                    other_status += 1;
                    held.push(stream);
                }
                Member::Refused => refused += 1,
                Member::Failed(error) => {
                    failed += 1;
                    first_failure.get_or_insert(error);
                }
            }
        }
        let answered = held.len() - other_status;
        println!(
            "answered={answered} refused={refused} other_status={other_status} failed={failed}"
        );
        if let Some(error) = first_failure {
            eprintln!("bench_upstream: first failure: {error}");
        }
        println!("ready");
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        drop(held);
        Ok(())
    })
}

/// One connection of a crowd: a keep-alive GET, and what came of it.
async fn crowd_member(addr: SocketAddr) -> Member {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(error) => return Member::Failed(error),
    };
    match read_answer(&mut stream).await {
        Ok(answer) => {
            let status = String::from_utf8_lossy(&answer)
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(0);
            Member::Answered(status, stream)
        }
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            Member::Refused
        }
        Err(error) => Member::Failed(error),
    }
}

/// Connects, sends one keep-alive GET and reads the whole answer.
async fn one_request(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    read_answer(&mut stream).await?;
    Ok(stream)
}

/// Sends one keep-alive GET on `stream` and reads its whole answer.
async fn read_answer(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    stream
        .write_all(b"GET /hold HTTP/1.1\r\nhost: bench\r\n\r\n")
        .await?;
    let mut answer = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        answer.extend_from_slice(&buffer[..read]);
        if answer_complete(&answer) {
            return Ok(answer);
        }
    }
}

/// Whether `answer` holds a full response head and `content-length` body bytes.
fn answer_complete(answer: &[u8]) -> bool {
    let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    answer.len() >= head_end + 4 + length
}
