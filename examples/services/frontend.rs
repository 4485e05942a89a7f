//! `frontend`: the HTTP entry point. `GET /checkout/<item>` calls `orders` over HTTP
//! (through the sidecar's outbound port for orders) and relays its answer.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

use super::http_server::{self, text};
use super::knobs::Knobs;
use super::propagate;
use super::INVENTORY_INSTANCE;

/// The frontend service.
#[derive(Debug, Clone)]
pub struct Frontend {
    orders_url: String,
    client: Client<HttpConnector, Full<Bytes>>,
    knobs: Knobs,
}

impl Frontend {
    /// Calls orders at `orders_url` (its sidecar's outbound port, e.g.
    /// `http://127.0.0.1:15101`).
    pub fn new(orders_url: &str, knobs: Knobs) -> Self {
        Self {
            orders_url: orders_url.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            knobs,
        }
    }

    /// Serves HTTP on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let frontend = Arc::new(self);
        http_server::serve(listener, move |request| {
            let frontend = frontend.clone();
            async move { frontend.handle(request).await }
        })
        .await
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(item) = request.uri().path().strip_prefix("/checkout/") else {
            return text(404, "try GET /checkout/<item>\n");
        };
        if self.knobs.apply().await {
            return text(500, "frontend: injected error\n");
        }
        let uri = format!("{}/orders/{item}", self.orders_url);
        let Ok(mut call) = Request::get(uri).body(Full::default()) else {
            return text(400, "frontend: bad item\n");
        };
        propagate::copy(request.headers(), call.headers_mut());
        let response = match self.client.request(call).await {
            Ok(response) => response,
            Err(error) => return text(502, format!("frontend: orders unreachable: {error}\n")),
        };
        let status = response.status();
        let instance = response.headers().get(INVENTORY_INSTANCE).cloned();
        let degraded = response.headers().get("x-remora-fallback").cloned();
        let body = match response.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(error) => return text(502, format!("frontend: orders body: {error}\n")),
        };
        let mut answer = text(status.as_u16(), body);
        if let Some(instance) = instance {
            answer.headers_mut().insert(INVENTORY_INSTANCE, instance);
        }
        if let Some(degraded) = degraded {
            answer.headers_mut().insert("x-remora-fallback", degraded);
        }
        answer
    }
}
