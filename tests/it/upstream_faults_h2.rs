//! An HTTP/2 (h2c) upstream that fails in the middle of an answer: a stream reset, a
//! GOAWAY with a call in flight (one that leaves it out, one graceful), a malformed
//! frame. HTTP/1.1, h2c and gRPC callers through the sidecar get an error, or a whole
//! answer where the upstream never saw the call or finished it, never an answer that
//! ends cleanly after a failure; nothing hangs, and no connection is left behind.
//!
//! The well-formed faults come from the `h2` crate's server; the GOAWAY that leaves a
//! stream out and the malformed frame are written by hand over a plain socket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use remora::echo::echo_client::EchoClient;
use remora::echo::{EchoReply, EchoRequest};

use crate::support::*;

/// Bound on one call, body included: past it the call hangs.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// What the upstream does to the first answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// RST_STREAM(INTERNAL_ERROR) after the head and a first body chunk (`h2` crate).
    Reset,
    /// A graceful GOAWAY after the head and a first chunk; the answer then completes
    /// (`h2` crate).
    GracefulGoaway,
    /// On the first connection, GOAWAY(last stream 0) once the call's HEADERS arrive: the
    /// call never reached the app. Later connections answer whole (hand-written).
    GoawayBelow,
    /// After the head and a first chunk, a SETTINGS frame of 5 bytes (FRAME_SIZE_ERROR),
    /// the connection left open (hand-written).
    Malformed,
}

/// Who calls through the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Http1,
    H2c,
    Grpc,
}

/// What a caller got, once its answer ended or failed.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The whole answer, cleanly ended: the body (plain), or the messages (gRPC OK).
    Whole(String),
    /// An error: a 5xx, a failed body, or a gRPC status other than OK.
    Failed(String),
}

/// The body chunks of a plain answer; a gRPC answer sends one message per chunk.
const CHUNKS: [&str; 2] = ["first;", "second;"];

/// One upstream data chunk: the text, or, for gRPC, an `EchoReply` in a gRPC frame.
fn chunk(text: &str, grpc: bool) -> Bytes {
    if !grpc {
        return Bytes::copy_from_slice(text.as_bytes());
    }
    let message = EchoReply {
        message: text.to_string(),
        payload: Vec::new(),
        instance: "hostile".into(),
    }
    .encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

/// The upstream's address and how many connections it has open (each one is a
/// descriptor here and one in the sidecar: both run in the test's process).
struct Upstream {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
}

/// Counts a connection open while it lives.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn upstream(fault: Fault, grpc: bool) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    tokio::spawn(async move {
        let mut index = 0;
        while let Ok((stream, _)) = listener.accept().await {
            let guard = OpenGuard::new(&counter);
            tokio::spawn(async move {
                match fault {
                    Fault::Reset | Fault::GracefulGoaway => {
                        h2_connection(stream, fault, grpc).await
                    }
                    Fault::GoawayBelow | Fault::Malformed => {
                        let hostile = fault == Fault::Malformed || index == 0;
                        let _ = raw_connection(stream, hostile.then_some(fault), grpc).await;
                    }
                }
                drop(guard);
            });
            index += 1;
        }
    });
    Upstream { addr, open }
}

/// Serves one connection with the `h2` crate, every answer failing per `fault`.
async fn h2_connection(stream: TcpStream, fault: Fault, grpc: bool) {
    let Ok(mut connection) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let head = http::Response::builder()
            .header(
                "content-type",
                if grpc {
                    "application/grpc"
                } else {
                    "text/plain"
                },
            )
            .body(())
            .unwrap();
        let Ok(mut send) = respond.send_response(head, false) else {
            continue;
        };
        let _ = send.send_data(chunk(CHUNKS[0], grpc), false);
        if fault == Fault::GracefulGoaway {
            connection.graceful_shutdown();
        }
        tokio::spawn(async move {
            let _request = request; // the request's stream stays open until the answer ends
                                    // Gives the first chunk time to reach the caller: the fault is mid-body.
            tokio::time::sleep(Duration::from_millis(100)).await;
            match fault {
                Fault::Reset => send.send_reset(h2::Reason::INTERNAL_ERROR),
                _ => finish_h2(&mut send, grpc),
            }
        });
    }
}

/// The rest of a whole answer: the second chunk, then end of stream (or OK trailers).
fn finish_h2(send: &mut h2::SendStream<Bytes>, grpc: bool) {
    let _ = send.send_data(chunk(CHUNKS[1], grpc), !grpc);
    if grpc {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let _ = send.send_trailers(trailers);
    }
}

/// Frame types and flags of the hand-written connection.
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK, literal without indexing, new name.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

/// `:status: 200` (static table entry 8) and the content type.
fn response_head(grpc: bool) -> Vec<u8> {
    let mut block = vec![0x88];
    literal(
        &mut block,
        "content-type",
        if grpc {
            "application/grpc"
        } else {
            "text/plain"
        },
    );
    block
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; length];
    stream.read_exact(&mut payload).await?;
    Ok((head[3], head[4], id, payload))
}

/// Serves one connection by hand: whole answers when `fault` is `None`, else the fault
/// on the first call, then reads until the sidecar closes.
async fn raw_connection(
    mut stream: TcpStream,
    fault: Option<Fault>,
    grpc: bool,
) -> std::io::Result<()> {
    let mut preface = [0u8; 24];
    stream.read_exact(&mut preface).await?;
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    let mut faulted = false;
    loop {
        let (kind, flags, id, _) = read_frame(&mut stream).await?;
        if kind == SETTINGS && flags & ACK == 0 {
            stream.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
        }
        // Small heads: no CONTINUATION frames.
        if kind != HEADERS || faulted {
            continue;
        }
        let head = frame(HEADERS, END_HEADERS, id, &response_head(grpc));
        let first = frame(DATA, 0, id, &chunk(CHUNKS[0], grpc));
        match fault {
            Some(Fault::GoawayBelow) => {
                // Last stream 0, NO_ERROR: stream `id` was never processed.
                let goaway = frame(GOAWAY, 0, 0, &[0; 8]);
                stream.write_all(&goaway).await?;
                faulted = true;
            }
            Some(_) => {
                stream.write_all(&[head, first].concat()).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
                stream.write_all(&frame(SETTINGS, 0, 0, &[0; 5])).await?;
                faulted = true;
            }
            None => {
                let end = if grpc { 0 } else { END_STREAM };
                let second = frame(DATA, end, id, &chunk(CHUNKS[1], grpc));
                let mut answer = [head, first, second].concat();
                if grpc {
                    let mut block = Vec::new();
                    literal(&mut block, "grpc-status", "0");
                    answer.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
                }
                stream.write_all(&answer).await?;
            }
        }
    }
}

/// A plain call through the sidecar by `client`: a 5xx or a body that fails is
/// `Failed`; a 2xx whose body ends cleanly is `Whole`.
async fn plain_call(
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    svc: SocketAddr,
) -> Outcome {
    let response = match client.get(format!("http://{svc}/").parse().unwrap()).await {
        Ok(response) => response,
        Err(error) => return Outcome::Failed(format!("request: {error}")),
    };
    let status = response.status();
    let body = response.into_body().collect().await;
    match body {
        Err(error) => Outcome::Failed(format!("{status}, then the body failed: {error}")),
        Ok(_) if status.is_server_error() => Outcome::Failed(status.to_string()),
        Ok(body) => {
            assert!(status.is_success(), "{status}");
            Outcome::Whole(String::from_utf8_lossy(&body.to_bytes()).into_owned())
        }
    }
}

/// A server-streaming gRPC call: every message then OK is `Whole` (the messages
/// joined); any status other than OK is `Failed`.
async fn grpc_call(svc: SocketAddr) -> Outcome {
    let mut client = EchoClient::connect(format!("http://{svc}")).await.unwrap();
    let request = EchoRequest {
        message: "2".into(),
        payload: Vec::new(),
    };
    let mut stream = match client.server_stream(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Outcome::Failed(format!("{:?}", status.code())),
    };
    let mut messages = String::new();
    loop {
        match stream.message().await {
            Ok(Some(reply)) => messages.push_str(&reply.message),
            Ok(None) => return Outcome::Whole(messages),
            Err(status) => {
                assert_ne!(status.code(), tonic::Code::Ok);
                return Outcome::Failed(format!("{:?} after {messages:?}", status.code()));
            }
        }
    }
}

/// The open sockets (those a descriptor holds: a nonzero inode in `/proc/net/tcp`) with
/// an end on one of `ports`, listeners included. The process's descriptor count would
/// count the sockets of the tests running beside this one.
fn open_sockets(ports: &[u16]) -> usize {
    let mut open = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |field: &str| {
                field
                    .rsplit(':')
                    .next()
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
            };
            let ours = [fields[1], fields[2]]
                .iter()
                .any(|end| port(end).is_some_and(|port| ports.contains(&port)));
            if ours && fields[9] != "0" {
                open += 1;
            }
        }
    }
    open
}

/// Runs one call of `caller` through a sidecar to an upstream failing per `fault`;
/// returns what the caller got, once no descriptor and no connection of the call is
/// left (or fails the test).
async fn scenario(fault: Fault, caller: Caller) -> Outcome {
    let upstream = upstream(fault, caller == Caller::Grpc).await;
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         policies:\n  retries:\n    refused:\n      attempts: 2\n      retry_on: [reset]\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    protocol: http2\n    \
         endpoints: [{}]\n    retry: refused\n",
        upstream.addr
    ))
    .await;
    let admin = proxy.addrs().admin.unwrap();
    let svc = proxy.addrs().service("svc").unwrap();
    let ports = [svc.port(), upstream.addr.port()];
    let baseline = open_sockets(&ports);

    let call = async {
        match caller {
            Caller::Http1 => plain_call(http1_client(), svc).await,
            Caller::H2c => plain_call(http2_client(), svc).await,
            Caller::Grpc => grpc_call(svc).await,
        }
    };
    let outcome = tokio::time::timeout(CALL_LIMIT, call)
        .await
        .unwrap_or_else(|_| panic!("{fault:?} / {caller:?}: the call hung"));

    // The caller's client is gone: what remains open is the two listeners and pooled
    // upstream connections, two sockets each (both ends are in this process).
    let settled = eventually(Duration::from_secs(5), || async {
        let expected = baseline + 2 * upstream.open.load(Ordering::SeqCst);
        open_sockets(&ports) == expected && metric(admin, "remora_upstream_pending").await == 0.0
    })
    .await;
    let fds = open_sockets(&ports);
    let pooled = upstream.open.load(Ordering::SeqCst);
    assert!(
        settled,
        "{fault:?} / {caller:?}: {fds} sockets open, {baseline} before the call and \
         {pooled} upstream connection(s) left; outcome {outcome:?}"
    );
    outcome
}

/// The whole answer each caller gets when nothing fails.
fn whole(caller: Caller) -> Outcome {
    Outcome::Whole(match caller {
        Caller::Grpc => "first;second;".into(),
        _ => CHUNKS.concat(),
    })
}

#[track_caller]
fn assert_failed(outcome: &Outcome) {
    assert!(
        matches!(outcome, Outcome::Failed(_)),
        "a clean end after an upstream failure: {outcome:?}"
    );
}

#[tokio::test]
async fn a_stream_reset_mid_body_fails_an_http1_caller() {
    assert_failed(&scenario(Fault::Reset, Caller::Http1).await);
}

#[tokio::test]
async fn a_stream_reset_mid_body_fails_an_h2c_caller() {
    assert_failed(&scenario(Fault::Reset, Caller::H2c).await);
}

#[tokio::test]
async fn a_stream_reset_mid_body_fails_a_grpc_caller() {
    assert_failed(&scenario(Fault::Reset, Caller::Grpc).await);
}

#[tokio::test]
async fn a_graceful_goaway_lets_the_call_in_flight_finish_for_every_caller() {
    for caller in [Caller::Http1, Caller::H2c, Caller::Grpc] {
        assert_eq!(
            scenario(Fault::GracefulGoaway, caller).await,
            whole(caller),
            "{caller:?}"
        );
    }
}

/// A GOAWAY whose last stream is below the call's: the app never saw it, so a retry
/// (GET, `retry_on: [reset]`) answers whole on a new connection; a gRPC call (POST, not
/// retried) fails.
#[tokio::test]
async fn a_goaway_that_leaves_the_call_out_is_retried_or_fails_never_ends_cleanly() {
    for caller in [Caller::Http1, Caller::H2c] {
        let outcome = scenario(Fault::GoawayBelow, caller).await;
        assert_eq!(outcome, whole(caller), "{caller:?}");
    }
    assert_failed(&scenario(Fault::GoawayBelow, Caller::Grpc).await);
}

#[tokio::test]
async fn a_malformed_frame_mid_body_fails_every_caller() {
    for caller in [Caller::Http1, Caller::H2c, Caller::Grpc] {
        let outcome = scenario(Fault::Malformed, caller).await;
        assert!(
            matches!(outcome, Outcome::Failed(_)),
            "{caller:?}: {outcome:?}"
        );
    }
}
