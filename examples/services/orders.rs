//! `orders`: an HTTP service. `GET /orders/<item>` asks `inventory` over gRPC (through
//! the sidecar's outbound port for inventory) and answers with the stock line.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use remora::echo::echo_client::EchoClient;
use remora::echo::EchoRequest;
use tokio::net::TcpListener;
use tonic::transport::Channel;

use super::http_server::{self, text};
use super::knobs::Knobs;
use super::propagate;
use super::INVENTORY_INSTANCE;

/// The orders service.
#[derive(Debug, Clone)]
pub struct Orders {
    inventory: EchoClient<Channel>,
    knobs: Knobs,
}

/// `INVENTORY_URL` is not a URI.
#[derive(Debug, thiserror::Error)]
#[error("inventory url {0:?}: {1}")]
pub struct BadUrl(String, String);

impl Orders {
    /// Calls inventory at `inventory_url` (its sidecar's outbound port, e.g.
    /// `http://127.0.0.1:15002`); connects lazily, so inventory may start later.
    pub fn new(inventory_url: &str, knobs: Knobs) -> Result<Self, BadUrl> {
        let channel = Channel::from_shared(inventory_url.to_string())
            .map_err(|e| BadUrl(inventory_url.into(), e.to_string()))?
            .connect_lazy();
        Ok(Self {
            inventory: EchoClient::new(channel),
            knobs,
        })
    }

    /// Serves HTTP on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let orders = Arc::new(self);
        http_server::serve(listener, move |request| {
            let orders = orders.clone();
            async move { orders.handle(request).await }
        })
        .await
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(item) = request.uri().path().strip_prefix("/orders/") else {
            return text(404, "try GET /orders/<item>\n");
        };
        let item = item.to_string();
        if self.knobs.apply().await {
            return text(500, "orders: injected error\n");
        }
        let mut call = tonic::Request::new(EchoRequest {
            message: item,
            payload: Vec::new(),
        });
        propagate::copy_to_metadata(request.headers(), call.metadata_mut());
        let mut inventory = self.inventory.clone();
        match inventory.unary(call).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                let mut response = text(200, format!("order accepted; {}\n", reply.message));
                if let Ok(instance) = reply.instance.parse() {
                    response.headers_mut().insert(INVENTORY_INSTANCE, instance);
                }
                response
            }
            Err(status) => text(
                503,
                format!(
                    "orders: inventory failed: {:?} {}\n",
                    status.code(),
                    status.message()
                ),
            ),
        }
    }
}
