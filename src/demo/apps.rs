//! The example services the demo puts behind sidecars: `catalog`, an HTTP/1.1 JSON
//! service, and `inventory`, the gRPC [`Echo`] service.
//!
//! Every instance answers with its own name (the `x-instance` header, or the reply's
//! `instance` field) so the table can show how the sidecars spread load. Each carries a
//! [`FaultSwitch`]: the [`Faults`] it injects into its own answers (latency, errors), which
//! can be changed while it runs to show the proxy reacting.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tonic::{Status, Streaming};

use crate::echo::echo_server::{Echo, EchoServer};
use crate::echo::{EchoReply, EchoRequest};

/// The header in which an HTTP example app names the instance that answered.
pub const INSTANCE_HEADER: &str = "x-instance";

/// How long an app may take to stop once asked before its task is aborted.
const APP_STOP_WAIT: Duration = Duration::from_secs(1);

/// What an example app speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    /// HTTP/1.1 with JSON bodies: `GET /items/{id}`.
    Http,
    /// gRPC (HTTP/2): the `remora.echo.v1.Echo` service.
    Grpc,
}

impl AppKind {
    /// The short name the table shows.
    pub fn label(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// Faults an example app injects into its own answers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    /// Added to every answer.
    pub latency: Duration,
    /// Up to this much more on top of `latency`, spread evenly over requests.
    pub jitter: Duration,
    /// Share of requests answered with an error (HTTP 500, gRPC UNAVAILABLE), `0.0..=1.0`.
    /// The errors are spread evenly, not random: a rate of 0.01 fails every 100th request.
    pub error_rate: f64,
}

/// The live [`Faults`] of one app instance; cheap to clone, changes apply to the next request.
#[derive(Debug, Clone)]
pub struct FaultSwitch(Arc<ArcSwap<Faults>>);

impl FaultSwitch {
    /// A switch starting at `faults`.
    pub fn new(faults: Faults) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(faults)))
    }

    /// The faults in force.
    pub fn get(&self) -> Arc<Faults> {
        self.0.load_full()
    }

    /// Replaces the faults for the requests that follow.
    pub fn set(&self, faults: Faults) {
        self.0.store(Arc::new(faults));
    }
}

/// Turns the faults in force into a decision per request. Deterministic: request `n`
/// always gets the same delay and verdict for the same faults.
#[derive(Debug)]
struct FaultPlan {
    switch: FaultSwitch,
    requests: AtomicU64,
}

/// What to do with one request.
struct Verdict {
    delay: Duration,
    fail: bool,
}

impl FaultPlan {
    fn new(switch: FaultSwitch) -> Self {
        Self {
            switch,
            requests: AtomicU64::new(0),
        }
    }

    fn next(&self) -> Verdict {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let faults = self.switch.0.load();
        let jitter_micros = u64::try_from(faults.jitter.as_micros()).unwrap_or(u64::MAX);
        let jitter = match jitter_micros {
            0 => Duration::ZERO,
            max => Duration::from_micros(spread(n) % max),
        };
        // Fail request n when the running count of due errors steps up at n.
        let rate = faults.error_rate.clamp(0.0, 1.0);
        let fail = ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor();
        Verdict {
            delay: faults.latency + jitter,
            fail,
        }
    }
}

/// A well-mixed 64-bit value for `n` (splitmix64's finaliser): spreads jitter evenly.
fn spread(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One running example app instance.
#[derive(Debug)]
pub struct AppInstance {
    /// Its name, e.g. `catalog-1`; it answers with it.
    pub name: Arc<str>,
    /// What it speaks.
    pub kind: AppKind,
    /// Where it listens (loopback, an ephemeral port).
    pub addr: SocketAddr,
    /// Its faults, changeable while it runs.
    pub faults: FaultSwitch,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl AppInstance {
    /// Starts an app of `kind` called `name` on `127.0.0.1:0`.
    pub async fn start(kind: AppKind, name: &str, faults: Faults) -> std::io::Result<Self> {
        let tcp = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = tcp.local_addr()?;
        let name: Arc<str> = Arc::from(name);
        let faults = FaultSwitch::new(faults);
        let plan = Arc::new(FaultPlan::new(faults.clone()));
        let (stop, stopped) = watch::channel(false);
        let task = match kind {
            AppKind::Http => tokio::spawn(serve_catalog(tcp, name.clone(), plan, stopped)),
            AppKind::Grpc => tokio::spawn(serve_echo(tcp, name.clone(), plan, stopped)),
        };
        Ok(Self {
            name,
            kind,
            addr,
            faults,
            stop,
            task,
        })
    }

    /// Stops accepting and closes its connections; aborts it if it takes too long.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(APP_STOP_WAIT, self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// The HTTP app: accepts until `stop`, then drops (and so closes) every connection.
async fn serve_catalog(
    tcp: TcpListener,
    name: Arc<str>,
    plan: Arc<FaultPlan>,
    mut stop: watch::Receiver<bool>,
) {
    let server = auto::Builder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = tcp.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (name, plan) = (name.clone(), plan.clone());
        let service = hyper::service::service_fn(move |request| {
            catalog_answer(request, name.clone(), plan.clone())
        });
        let connection = server
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        connections.spawn(async move {
            let _ = connection.await;
        });
        // Reap finished connections so the set stays as large as the open ones.
        while connections.try_join_next().is_some() {}
    }
}

/// `GET /items/{id}` -> a JSON item; anything else -> 404.
async fn catalog_answer(
    request: Request<Incoming>,
    instance: Arc<str>,
    plan: Arc<FaultPlan>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let verdict = plan.next();
    if !verdict.delay.is_zero() {
        tokio::time::sleep(verdict.delay).await;
    }
    let id = request.uri().path().strip_prefix("/items/");
    let (status, body) = match id {
        _ if verdict.fail => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": "injected fault" }),
        ),
        Some(id) if !id.is_empty() && !id.contains('/') => (
            StatusCode::OK,
            serde_json::json!({ "id": id, "name": format!("item {id}"), "instance": &*instance }),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "no such item" }),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Ok(value) = header::HeaderValue::from_str(&instance) {
        headers.insert(INSTANCE_HEADER, value);
    }
    Ok(response)
}

/// The gRPC app: the Echo service until `stop`.
async fn serve_echo(
    tcp: TcpListener,
    name: Arc<str>,
    plan: Arc<FaultPlan>,
    mut stop: watch::Receiver<bool>,
) {
    let incoming = futures_util::stream::unfold(tcp, |tcp| async move {
        let accepted = tcp.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        });
        Some((accepted, tcp))
    });
    let service = EchoServer::new(EchoApp { name, plan });
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    if let Err(error) = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stopped)
        .await
    {
        tracing::warn!(%error, "demo gRPC app stopped with an error");
    }
}

/// The Echo service of one instance.
struct EchoApp {
    name: Arc<str>,
    plan: Arc<FaultPlan>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

/// How many replies `ServerStream` sends.
const SERVER_STREAM_REPLIES: usize = 3;

impl EchoApp {
    /// Applies the fault plan, then echoes `request`.
    async fn answer(&self, request: EchoRequest) -> Result<EchoReply, Status> {
        let verdict = self.plan.next();
        if !verdict.delay.is_zero() {
            tokio::time::sleep(verdict.delay).await;
        }
        if verdict.fail {
            return Err(Status::unavailable("injected fault"));
        }
        Ok(self.reply(request))
    }

    fn reply(&self, request: EchoRequest) -> EchoReply {
        EchoReply {
            message: request.message,
            payload: request.payload,
            instance: self.name.to_string(),
        }
    }
}

#[tonic::async_trait]
impl Echo for EchoApp {
    async fn unary(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        self.answer(request.into_inner())
            .await
            .map(tonic::Response::new)
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<ReplyStream>, Status> {
        let first = self.answer(request.into_inner()).await?;
        let replies = vec![Ok(first); SERVER_STREAM_REPLIES];
        Ok(tonic::Response::new(Box::pin(futures_util::stream::iter(
            replies,
        ))))
    }

    async fn client_stream(
        &self,
        request: tonic::Request<Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        let mut requests = request.into_inner();
        let mut last = EchoRequest::default();
        while let Some(request) = requests.message().await? {
            last = request;
        }
        self.answer(last).await.map(tonic::Response::new)
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: tonic::Request<Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<ReplyStream>, Status> {
        let instance = self.name.clone();
        let replies = request.into_inner().map(move |request| {
            request.map(|request| EchoReply {
                message: request.message,
                payload: request.payload,
                instance: instance.to_string(),
            })
        });
        Ok(tonic::Response::new(Box::pin(replies)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(faults: Faults) -> FaultPlan {
        FaultPlan::new(FaultSwitch::new(faults))
    }

    #[test]
    fn error_rate_fails_evenly_spread_requests() {
        let plan = plan(Faults {
            error_rate: 0.1,
            ..Faults::default()
        });
        let failed: Vec<usize> = (0..30).filter(|_| plan.next().fail).collect();
        assert_eq!(failed, [9, 19, 29]);
    }

    #[test]
    fn no_faults_means_no_delay_and_no_errors() {
        let plan = plan(Faults::default());
        assert!((0..100).all(|_| {
            let verdict = plan.next();
            !verdict.fail && verdict.delay.is_zero()
        }));
    }

    #[test]
    fn delay_stays_within_latency_plus_jitter() {
        let plan = plan(Faults {
            latency: Duration::from_millis(2),
            jitter: Duration::from_millis(3),
            error_rate: 0.0,
        });
        for _ in 0..1000 {
            let delay = plan.next().delay;
            assert!(delay >= Duration::from_millis(2) && delay < Duration::from_millis(5));
        }
    }

    #[test]
    fn a_switched_fault_applies_to_the_next_request() {
        let switch = FaultSwitch::new(Faults::default());
        let plan = FaultPlan::new(switch.clone());
        assert!(!plan.next().fail);
        switch.set(Faults {
            error_rate: 1.0,
            ..Faults::default()
        });
        assert!(plan.next().fail);
    }
}
