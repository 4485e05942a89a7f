//! `inventory`: a gRPC server (`remora.echo.v1.Echo/Unary`) answering how many of an
//! item are in stock, and which instance answered.

use std::pin::Pin;

use futures_util::Stream;
use remora::echo::echo_server::{Echo, EchoServer};
use remora::echo::{EchoReply, EchoRequest};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use super::knobs::Knobs;

/// One inventory instance.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// Reported in every reply's `instance`.
    pub instance: String,
    /// Injected latency and errors.
    pub knobs: Knobs,
    /// Counts answered calls, for tests and logs.
    pub served: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Inventory {
    /// An instance named `instance`.
    pub fn new(instance: impl Into<String>, knobs: Knobs) -> Self {
        Self {
            instance: instance.into(),
            knobs,
            served: Default::default(),
        }
    }

    /// Serves gRPC on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(self))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Echo for Inventory {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        if self.knobs.apply().await {
            return Err(Status::unavailable(format!(
                "{}: injected error",
                self.instance
            )));
        }
        self.served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let item = request.into_inner().message;
        // A stable, made-up stock level per item.
        let stock = item
            .bytes()
            .fold(7u32, |a, b| a.wrapping_mul(31) ^ u32::from(b))
            % 100;
        Ok(Response::new(EchoReply {
            message: format!("{item}: {stock} in stock"),
            payload: Vec::new(),
            instance: self.instance.clone(),
        }))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        _: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        Err(Status::unimplemented("inventory answers unary calls only"))
    }

    async fn client_stream(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        Err(Status::unimplemented("inventory answers unary calls only"))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        Err(Status::unimplemented("inventory answers unary calls only"))
    }
}
