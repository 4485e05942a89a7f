//! The load generator: a few paced workers per service, each calling through the
//! frontend sidecar and recording what it saw into that service's [`ServiceStats`].
//!
//! Pacing is per worker (a fixed interval, staggered across workers), so the total rate
//! stays steady and modest whatever the latency, and a slow service gets fewer calls
//! rather than a growing queue. A [`Caller`] is how one service is called; adding a
//! service to the load means adding a caller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{HeaderValue, HOST};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tonic::transport::Channel;

use super::apps::INSTANCE_HEADER;
use super::stats::{CallStatus, Outcome, ServiceStats};
use crate::echo::echo_client::EchoClient;
use crate::echo::EchoRequest;
use crate::policy::fallback::FALLBACK_HEADER;

/// A call that takes longer than this is counted as `timeout` and abandoned.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How one service is called.
pub trait Caller: Send + Sync + 'static {
    /// Makes one call and says how it ended.
    fn call(&self) -> BoxFuture<'_, Outcome>;
}

/// How hard to push.
#[derive(Debug, Clone, Copy)]
pub struct LoadPlan {
    /// Calls per second across every service, shared evenly among them.
    pub rate: u32,
    /// Concurrent workers per service.
    pub workers_per_service: usize,
}

/// One service under load: where its numbers go and how to call it.
pub struct LoadTarget {
    /// Its statistics.
    pub stats: Arc<ServiceStats>,
    /// How to call it.
    pub caller: Arc<dyn Caller>,
}

/// Running load workers.
pub struct LoadGenerator {
    stop: watch::Sender<bool>,
    workers: JoinSet<()>,
}

impl LoadGenerator {
    /// Starts `plan.workers_per_service` paced workers for each of `targets`.
    pub fn start(targets: Vec<LoadTarget>, plan: LoadPlan) -> Self {
        let (stop, _) = watch::channel(false);
        let mut workers = JoinSet::new();
        let workers_per_service = plan.workers_per_service.max(1);
        let total_workers = u32::try_from(targets.len() * workers_per_service).unwrap_or(1);
        // Each worker calls once per `period`; together they make `plan.rate` per second.
        let period = Duration::from_secs(1) * total_workers.max(1) / plan.rate.max(1);
        let start = Instant::now();
        let mut index = 0;
        for target in targets {
            for _ in 0..workers_per_service {
                let offset = period * index / total_workers.max(1);
                index += 1;
                workers.spawn(work(
                    target.stats.clone(),
                    target.caller.clone(),
                    start + offset,
                    period,
                    stop.subscribe(),
                ));
            }
        }
        Self { stop, workers }
    }

    /// Stops calling, lets calls in flight finish (each within the call timeout), and
    /// says whether every worker ended normally.
    pub async fn stop(mut self) -> bool {
        let _ = self.stop.send(true);
        let mut clean = true;
        while let Some(result) = self.workers.join_next().await {
            clean &= result.is_ok();
        }
        clean
    }
}

/// One worker: a call every `period` from `first` until `stop`.
async fn work(
    stats: Arc<ServiceStats>,
    caller: Arc<dyn Caller>,
    first: Instant,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval_at(first, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        let outcome = tokio::time::timeout(CALL_TIMEOUT, caller.call())
            .await
            .unwrap_or_else(|_| Outcome::failed("timeout"));
        stats.record(started.elapsed(), &outcome);
    }
}

/// Calls an HTTP service through the sidecar's shared outbound port, naming the service
/// in `Host`: `GET /items/{n}`.
pub struct HttpCaller {
    client: Client<HttpConnector, Empty<Bytes>>,
    /// `http://<outbound address>`.
    base: String,
    host: HeaderValue,
    next_item: AtomicU64,
}

/// How many distinct items the HTTP load asks for.
const ITEMS: u64 = 100;

impl HttpCaller {
    /// A caller of `service` through the outbound listener at `outbound`.
    pub fn new(
        outbound: std::net::SocketAddr,
        service: &str,
    ) -> Result<Self, http::header::InvalidHeaderValue> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: format!("http://{outbound}"),
            host: HeaderValue::from_str(service)?,
            next_item: AtomicU64::new(0),
        })
    }

    async fn get(&self) -> Outcome {
        let item = self.next_item.fetch_add(1, Ordering::Relaxed) % ITEMS;
        let Ok(uri) = format!("{}/items/{item}", self.base).parse::<Uri>() else {
            return Outcome::failed("bad-uri");
        };
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = uri;
        request.headers_mut().insert(HOST, self.host.clone());
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(error) if error.is_connect() => return Outcome::failed("connect"),
            Err(_) => return Outcome::failed("error"),
        };
        let status = response.status().as_u16();
        let instance = response
            .headers()
            .get(INSTANCE_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(Arc::from);
        let degraded = response.headers().contains_key(&FALLBACK_HEADER);
        // Read the body to the end so the connection goes back to the pool.
        if response.into_body().collect().await.is_err() {
            return Outcome::failed("body");
        }
        Outcome {
            status: CallStatus::Http(status),
            instance,
            degraded,
        }
    }
}

impl Caller for HttpCaller {
    fn call(&self) -> BoxFuture<'_, Outcome> {
        Box::pin(self.get())
    }
}

/// Calls the gRPC Echo service's `Unary` through a sidecar port dedicated to it.
pub struct GrpcCaller {
    client: EchoClient<Channel>,
}

impl GrpcCaller {
    /// A caller through the dedicated port at `addr`; connects on first use.
    pub fn new(addr: std::net::SocketAddr) -> Result<Self, http::uri::InvalidUri> {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            client: EchoClient::new(channel),
        })
    }

    async fn unary(&self) -> Outcome {
        // A tonic client is a cheap handle on one shared HTTP/2 connection.
        let mut client = self.client.clone();
        let request = EchoRequest {
            message: "ping".to_string(),
            payload: Vec::new(),
        };
        match client.unary(request).await {
            Ok(reply) => Outcome {
                status: CallStatus::Grpc(tonic::Code::Ok),
                degraded: reply.metadata().contains_key(FALLBACK_HEADER.as_str()),
                instance: Some(Arc::from(reply.into_inner().instance)),
            },
            Err(status) => Outcome {
                status: CallStatus::Grpc(status.code()),
                instance: None,
                degraded: status.metadata().contains_key(FALLBACK_HEADER.as_str()),
            },
        }
    }
}

impl Caller for GrpcCaller {
    fn call(&self) -> BoxFuture<'_, Outcome> {
        Box::pin(self.unary())
    }
}
