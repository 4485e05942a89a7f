//! A gRPC upstream (the `remora::echo` service) whose answers end the ways a test needs:
//! OK in trailers, an error in trailers after some messages, or an error trailers-only.

use std::net::SocketAddr;
use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use remora::echo::echo_client::EchoClient;
use remora::echo::echo_server::{Echo, EchoServer};
use remora::echo::{EchoReply, EchoRequest};

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

struct Scripted;

fn reply(message: String) -> EchoReply {
    EchoReply {
        message,
        payload: Vec::new(),
        instance: "test".into(),
    }
}

#[tonic::async_trait]
impl Echo for Scripted {
    /// `fail`: NOT_FOUND before any message (trailers-only); anything else: echoed, OK.
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let message = request.into_inner().message;
        if message == "fail" {
            return Err(Status::not_found("no such thing"));
        }
        Ok(Response::new(reply(message)))
    }

    type ServerStreamStream = ReplyStream;

    /// `N`: N messages, then OK; `fail:N`: N messages, then NOT_FOUND (in trailers).
    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let message = request.into_inner().message;
        let (fail, count) = match message.strip_prefix("fail:") {
            Some(count) => (true, count),
            None => (false, message.as_str()),
        };
        let count: usize = count.parse().unwrap_or(1);
        let replies = (0..count).map(|i| Ok(reply(i.to_string())));
        let end = fail.then(|| Err(Status::not_found("gone after streaming")));
        let stream = futures_util::stream::iter(replies.chain(end));
        Ok(Response::new(Box::pin(stream)))
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
        Ok(Response::new(reply(joined.join(","))))
    }

    type BidiStream = ReplyStream;

    /// Answers each message, for as long as the caller sends.
    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let replies = request
            .into_inner()
            .map(|m| m.map(|m| reply(format!("re:{}", m.message))));
        Ok(Response::new(Box::pin(replies)))
    }
}

/// Serves the scripted echo service on an ephemeral port.
pub async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(Scripted))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// Serves the scripted echo service on an ephemeral port, counting the calls that reach
/// it.
pub async fn serve_counting() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let service = EchoServer::with_interceptor(Scripted, move |request| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(request)
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, calls)
}

/// A client of the echo service at `addr` (a sidecar's port).
pub async fn client(addr: SocketAddr) -> EchoClient<tonic::transport::Channel> {
    EchoClient::connect(format!("http://{addr}")).await.unwrap()
}

/// A request carrying `message`.
pub fn request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        payload: Vec::new(),
    }
}

/// Calls `ServerStream` with `message` and reads it to its end: the messages received,
/// and the status it ended with.
pub async fn stream_to_end(
    client: &mut EchoClient<tonic::transport::Channel>,
    message: &str,
) -> (usize, tonic::Code) {
    let mut stream = client
        .server_stream(request(message))
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    loop {
        match stream.next().await {
            Some(Ok(_)) => received += 1,
            Some(Err(status)) => return (received, status.code()),
            None => return (received, tonic::Code::Ok),
        }
    }
}

/// Starts a `Bidi` call to `addr` over a raw h2c connection, waits for the response
/// headers, then shuts the connection's socket down mid-call, as a client that goes away
/// does. The returned sender keeps the request body open (so no end of the call races
/// the shutdown); drop it when done.
pub async fn abandon_bidi(
    addr: SocketAddr,
) -> tokio::sync::mpsc::Sender<Result<hyper::body::Frame<bytes::Bytes>, remora::core::body::BoxError>>
{
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap()
        .into_std()
        .unwrap();
    // A second handle on the same socket: shutting it down ends the connection whatever
    // hyper's connection task still holds.
    let socket = stream.try_clone().unwrap();
    let stream = tokio::net::TcpStream::from_std(stream).unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let (tx, body) = super::channel_body();
    let request = http::Request::post(format!("http://{addr}/remora.echo.v1.Echo/Bidi"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("grpc-status").is_none());
    socket.shutdown(std::net::Shutdown::Both).unwrap();
    tx
}
