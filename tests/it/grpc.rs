//! gRPC through the proxy: the four call kinds, status and trailers passed through,
//! 4 MiB messages, long-lived streams, and gRPC-shaped errors from remora itself.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use remora::echo::echo_client::EchoClient;
use remora::echo::echo_server::{Echo, EchoServer};
use remora::echo::{EchoReply, EchoRequest};

use crate::support;

const BIG: usize = 8 * 1024 * 1024;

struct EchoService;

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

fn reply(message: String, payload: Vec<u8>) -> EchoReply {
    EchoReply {
        message,
        payload,
        instance: "test".into(),
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let request = request.into_inner();
        if request.message == "fail" {
            let mut status = Status::not_found("no such thing: café");
            status
                .metadata_mut()
                .insert("x-reason", "missing".parse().unwrap());
            return Err(status);
        }
        Ok(Response::new(reply(request.message, request.payload)))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let count: usize = request.into_inner().message.parse().unwrap_or(3);
        let replies = (0..count).map(|i| Ok(reply(i.to_string(), Vec::new())));
        Ok(Response::new(Box::pin(futures_util::stream::iter(replies))))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let mut stream = request.into_inner();
        let mut joined = Vec::new();
        while let Some(message) = stream.next().await {
            joined.push(message?.message);
        }
        Ok(Response::new(reply(joined.join(","), Vec::new())))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let stream = request.into_inner();
        let replies = stream.map(|m| m.map(|m| reply(format!("re:{}", m.message), m.payload)));
        Ok(Response::new(Box::pin(replies)))
    }
}

async fn grpc_upstream() -> SocketAddr {
    counting_grpc_upstream().await.0
}

/// The echo upstream, and how many TCP connections it has accepted.
async fn counting_grpc_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let incoming = TcpListenerStream::new(listener).inspect(move |connection| {
        if connection.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let service = EchoServer::new(EchoService)
        .max_decoding_message_size(BIG)
        .max_encoding_message_size(BIG);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    (addr, accepted)
}

/// A sidecar allowed one HTTP/2 connection to a counting upstream, a client of it, and
/// the count of upstream connections accepted.
async fn one_upstream_connection() -> (
    remora::Sidecar,
    Arc<AtomicUsize>,
    EchoClient<tonic::transport::Channel>,
) {
    let (upstream, accepted) = counting_grpc_upstream().await;
    let proxy = support::sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         upstream: {{ http2_connections_per_endpoint: 1 }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    protocol: http2\n    endpoints: [{upstream}]\n"
    ))
    .await;
    let client = client(proxy.addrs().service("svc").unwrap()).await;
    (proxy, accepted, client)
}

async fn client(addr: SocketAddr) -> EchoClient<tonic::transport::Channel> {
    EchoClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(BIG)
        .max_encoding_message_size(BIG)
}

async fn through_proxy() -> (remora::Sidecar, EchoClient<tonic::transport::Channel>) {
    let upstream = grpc_upstream().await;
    let proxy = support::outbound_to(&[upstream], "http2").await;
    let svc = proxy.addrs().service("svc").unwrap();
    let client = client(svc).await;
    (proxy, client)
}

fn request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        payload: Vec::new(),
    }
}

#[tokio::test]
async fn unary() {
    let (_proxy, mut client) = through_proxy().await;
    let reply = client.unary(request("hi")).await.unwrap().into_inner();
    assert_eq!(reply.message, "hi");
}

#[tokio::test]
async fn server_streaming() {
    let (_proxy, mut client) = through_proxy().await;
    let stream = client
        .server_stream(request("50"))
        .await
        .unwrap()
        .into_inner();
    let messages: Vec<String> = stream.map(|r| r.unwrap().message).collect().await;
    assert_eq!(messages.len(), 50);
    assert_eq!(messages[49], "49");
}

#[tokio::test]
async fn client_streaming() {
    let (_proxy, mut client) = through_proxy().await;
    let outgoing = futures_util::stream::iter(["a", "b", "c"].map(request));
    let reply = client.client_stream(outgoing).await.unwrap().into_inner();
    assert_eq!(reply.message, "a,b,c");
}

#[tokio::test]
async fn bidi_streaming_is_interactive_and_long_lived() {
    let (_proxy, mut client) = through_proxy().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Each reply arrives before the next message is sent: nothing is buffered whole.
    for i in 0..5 {
        tx.send(request(&i.to_string())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("reply in time")
            .unwrap()
            .unwrap();
        assert_eq!(reply.message, format!("re:{i}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(tx);
    assert!(replies.next().await.is_none());
}

#[tokio::test]
async fn four_mebibyte_messages_both_ways() {
    let (_proxy, mut client) = through_proxy().await;
    let payload: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = client
        .unary(EchoRequest {
            message: "big".into(),
            payload: payload.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.payload.len(), payload.len());
    assert!(reply.payload == payload);
}

#[tokio::test]
async fn a_thousand_concurrent_small_calls_share_one_upstream_connection() {
    // One HTTP/2 connection per endpoint (the default allows 4, opening another when one
    // carries 100 streams): all 1000 calls are multiplexed on it. Hundreds of streams
    // each holding a small unread message must not trip h2's small-DATA-frame budget on
    // that connection.
    let (_proxy, accepted, client) = one_upstream_connection().await;
    let calls = (0..1000).map(|i| {
        let mut client = client.clone();
        async move { client.unary(request(&i.to_string())).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "upstream connections for 1000 calls"
    );
}

/// Calls whose request streams stay open run, on the upstream connection, as futures of
/// that connection's task: 100 concurrent client-streaming calls over one upstream
/// connection, each still sending while the others are in flight, each get back their
/// own messages.
#[tokio::test]
async fn a_hundred_concurrent_client_streams_share_one_upstream_connection() {
    let (_proxy, accepted, client) = one_upstream_connection().await;
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for i in 0..100 {
        let (sender, messages) = tokio::sync::mpsc::channel(4);
        sender.send(request(&format!("{i}-a"))).await.unwrap();
        let mut client = client.clone();
        let messages = tokio_stream::wrappers::ReceiverStream::new(messages);
        calls.push(tokio::spawn(
            async move { client.client_stream(messages).await },
        ));
        senders.push(sender);
    }
    // The second messages go once every call has been started; each call ends with its
    // sender.
    for (i, sender) in senders.into_iter().enumerate() {
        sender.send(request(&format!("{i}-b"))).await.unwrap();
    }
    for (i, call) in calls.into_iter().enumerate() {
        let reply = call.await.unwrap().unwrap().into_inner();
        assert_eq!(reply.message, format!("{i}-a,{i}-b"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "upstream connections");
}

#[tokio::test]
async fn status_message_and_trailers_pass_through() {
    let (_proxy, mut client) = through_proxy().await;
    let status = client.unary(request("fail")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "no such thing: café");
    assert_eq!(status.metadata().get("x-reason").unwrap(), "missing");
    assert!(status.metadata().get("x-remora-error").is_none());
}

#[tokio::test]
async fn grpc_works_through_auto_protocol_too() {
    let upstream = grpc_upstream().await;
    let proxy = support::outbound_to(&[upstream], "auto").await;
    let mut client = client(proxy.addrs().service("svc").unwrap()).await;
    assert_eq!(
        client
            .unary(request("x"))
            .await
            .unwrap()
            .into_inner()
            .message,
        "x"
    );
}

#[tokio::test]
async fn a_dead_upstream_is_grpc_unavailable() {
    let dead = support::dead_endpoint();
    let proxy = support::outbound_to(&[dead], "http2").await;
    let mut client = client(proxy.addrs().service("svc").unwrap()).await;
    let status = client.unary(request("x")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status.metadata().get("x-remora-error").unwrap(),
        "connect-failure"
    );
}

#[tokio::test]
async fn an_unknown_grpc_destination_is_unimplemented() {
    let upstream = grpc_upstream().await;
    let proxy = support::outbound_to(&[upstream], "http2").await;
    let shared = proxy.addrs().outbound.unwrap();
    // Connecting by address, the :authority names no configured service.
    let mut client = client(shared).await;
    let status = client.unary(request("x")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert_eq!(
        status.metadata().get("x-remora-error").unwrap(),
        "unknown-destination"
    );
}

#[tokio::test]
async fn a_grpc_call_remora_refuses_as_malformed_gets_internal() {
    // remora does not parse gRPC messages; what it refuses itself is framing: a body
    // whose chunk framing is broken, and CONNECT (it never tunnels). A gRPC caller gets
    // the refusal as a gRPC status, and nothing reaches the upstream.
    let (upstream, accepted) = counting_grpc_upstream().await;
    let proxy = support::outbound_to(&[upstream], "http2").await;
    let svc = proxy.addrs().service("svc").unwrap();

    let response = support::raw(
        svc,
        b"POST /remora.echo.v1.Echo/Unary HTTP/1.1\r\nHost: svc\r\n\
          content-type: application/grpc\r\nte: trailers\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(support::status_of(&response), 200, "{response}");
    let head = response.to_ascii_lowercase();
    for header in [
        "content-type: application/grpc",
        "grpc-status: 13",
        "x-remora-error: bad-request",
    ] {
        assert!(head.contains(header), "no {header:?} in {response}");
    }

    let stream = tokio::net::TcpStream::connect(svc).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let connect = http::Request::connect("svc:80")
        .header("content-type", "application/grpc")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(connect).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "13", "INTERNAL");
    assert_eq!(response.headers()["x-remora-error"], "bad-request");

    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the upstream saw nothing"
    );
}
