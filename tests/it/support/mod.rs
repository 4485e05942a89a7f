//! Shared pieces of the scenario tests: programmable upstreams, a sidecar started from
//! YAML on ephemeral ports, and raw-socket clients for what well-behaved clients never send;
//! [`echo`] (a scripted gRPC upstream), [`etcd_harness`] (a real etcd),
//! [`otlp_receiver`] (an OTLP collector) and [`redis_harness`] (a real Redis) are the
//! heavier pieces, each in its own module;
//! [`tls_front`] makes certificates and terminates TLS in front of plaintext upstreams;
//! [`dns`] serves a DNS zone the test changes; [`zk_harness`] runs a real ZooKeeper, [`curator_probe`] Apache Curator against it;
//! [`netns`] puts hosts of their own on one machine (network namespaces).

pub mod certs;
pub mod curator_probe;
pub mod dns;
pub mod echo;
pub mod etcd_harness;
pub mod fake_server;
pub mod log_lines;
pub mod metrics_text;
pub mod netns;
pub mod otlp_receiver;
pub mod pki;
pub mod redis_harness;
pub mod tls_front;
pub mod zk_harness;

pub use metrics_text::{metric, metric_or_zero};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Any body a test upstream answers with.
pub type TestBody = http_body_util::combinators::BoxBody<Bytes, remora::core::body::BoxError>;

/// A whole body.
pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body of frames sent later through the returned sender.
pub fn channel_body() -> (
    tokio::sync::mpsc::Sender<Result<hyper::body::Frame<Bytes>, remora::core::body::BoxError>>,
    TestBody,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    (tx, body.boxed())
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Every request an upstream received, in order.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn push(&self, seen: Seen) {
        self.0.lock().unwrap().push(seen);
    }
}

/// An HTTP/1.1 + h2c server on an ephemeral port whose answers `handler` makes.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, handler)
}

/// Like [`serve`], on a listener the test bound (another loopback address, a given port).
pub fn serve_on<F, Fut>(listener: TcpListener, handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An upstream that records each request (body read whole) and answers 200 with
/// `echo:<path>` and an `x-upstream: <name>` header.
pub async fn recording(name: &'static str) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    recording_on(listener, name)
}

/// Like [`recording`], on a listener the test bound.
pub fn recording_on(listener: TcpListener, name: &'static str) -> (SocketAddr, Log) {
    let log = Log::default();
    let seen = log.clone();
    let addr = serve_on(listener, move |request: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let path = parts.uri.path().to_string();
            seen.push(Seen {
                path: path.clone(),
                version: parts.version,
                headers: parts.headers,
                body,
            });
            Response::builder()
                .header("x-upstream", name)
                .body(full(format!("echo:{path}")))
                .unwrap()
        }
    });
    (addr, log)
}

/// Starts a sidecar from YAML (listeners should use port 0).
pub async fn sidecar(yaml: &str) -> remora::Sidecar {
    let config = remora::build::parse("test.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
    remora::Sidecar::start(config).await.unwrap()
}

/// A sidecar whose service `svc` (dedicated port and shared outbound) goes to `upstreams`.
pub async fn outbound_to(upstreams: &[SocketAddr], protocol: &str) -> remora::Sidecar {
    let endpoints: Vec<String> = upstreams.iter().map(|a| a.to_string()).collect();
    sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         outbound: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    protocol: {protocol}\n    endpoints: [{}]\n",
        endpoints.join(", ")
    ))
    .await
}

/// A pooled HTTP/1.1 client.
pub fn http1_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn http2_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// GET `url` and return (status, headers, body as text).
pub async fn get(url: &str) -> (http::StatusCode, http::HeaderMap, String) {
    let response = http1_client().get(url.parse().unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Writes `request` on a fresh connection and reads until the peer closes or goes quiet.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_all(&mut stream, Duration::from_secs(2)).await
}

/// Reads until EOF, or until nothing arrives for `quiet`.
pub async fn read_all(stream: &mut TcpStream, quiet: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status line's code of a raw response.
pub fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// A free loopback port (bound then released; the test binds it again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The remora binary serving one service on `upstream` with `protocol` and
/// `drain_timeout`: the process, its admin and service ports, and the directory of its
/// config (kept while the process runs).
pub async fn sidecar_process(
    upstream: SocketAddr,
    protocol: &str,
    drain_timeout: &str,
) -> (Process, u16, u16, tempfile::TempDir) {
    sidecar_process_with(
        upstream,
        protocol,
        &format!("drain_timeout: {drain_timeout}"),
    )
    .await
}

/// Like [`sidecar_process`], with `settings` (top-level YAML) in its config.
pub async fn sidecar_process_with(
    upstream: SocketAddr,
    protocol: &str,
    settings: &str,
) -> (Process, u16, u16, tempfile::TempDir) {
    sidecar_process_logging(upstream, protocol, settings, "info").await
}

/// Like [`sidecar_process_with`], logging what `filter` (a `RUST_LOG` value) lets
/// through.
pub async fn sidecar_process_logging(
    upstream: SocketAddr,
    protocol: &str,
    settings: &str,
    filter: &str,
) -> (Process, u16, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.yaml");
    let (admin, port) = (free_port(), free_port());
    std::fs::write(
        &path,
        format!(
            "admin: {{ listen: 127.0.0.1:{admin} }}\n{settings}\n\
             services:\n  svc:\n    listen: 127.0.0.1:{port}\n    protocol: {protocol}\n    endpoints: [{upstream}]\n"
        ),
    )
    .unwrap();
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let process = Process::run_logging(&path, admin_addr, filter).await;
    (process, admin, port, dir)
}

/// The `remora` binary running as a child process, killed when dropped.
pub struct Process {
    pub child: std::process::Child,
    pub stderr: std::path::PathBuf,
}

impl Process {
    /// Starts `remora run -c <config>` with stderr captured to a file beside the config,
    /// and waits until `admin` answers `/live`.
    pub async fn run(config: &std::path::Path, admin: SocketAddr) -> Process {
        Self::run_logging(config, admin, "info").await
    }

    /// Like [`run`](Self::run), logging what `filter` (a `RUST_LOG` value) lets through.
    pub async fn run_logging(config: &std::path::Path, admin: SocketAddr, filter: &str) -> Process {
        Self::run_with_env(config, admin, &[("RUST_LOG", filter)]).await
    }

    /// Like [`run`](Self::run), with `env` set for it.
    pub async fn run_with_env(
        config: &std::path::Path,
        admin: SocketAddr,
        env: &[(&str, &str)],
    ) -> Process {
        let stderr = config.with_extension("stderr");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_remora"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let process = Process { child, stderr };
        for _ in 0..100 {
            if TcpStream::connect(admin).await.is_ok() {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("remora did not start: {}", process.log());
    }

    /// Sends a signal (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for it to exit, up to `limit`.
    pub async fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "remora did not exit: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it is true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A sidecar with `policies` (YAML under `policies:`, indented by 2) whose service `svc`
/// (dedicated port) goes to `upstreams` with `extra` service fields (indented by 4).
pub async fn with_policies(
    policies: &str,
    extra: &str,
    upstreams: &[SocketAddr],
) -> remora::Sidecar {
    let endpoints: Vec<String> = upstreams.iter().map(|a| a.to_string()).collect();
    sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         policies:\n{policies}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{}]\n{extra}\n",
        endpoints.join(", ")
    ))
    .await
}

/// An upstream that answers with `status(n)` for its n-th request (0-based) and records
/// every request it saw.
pub async fn scripted<F>(status: F) -> (SocketAddr, Log)
where
    F: Fn(usize) -> u16 + Send + Sync + Clone + 'static,
{
    let log = Log::default();
    let seen = log.clone();
    let addr = serve(move |request: Request<Incoming>| {
        let seen = seen.clone();
        let status = status.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let n = seen.len();
            seen.push(Seen {
                path: parts.uri.path().to_string(),
                version: parts.version,
                headers: parts.headers,
                body,
            });
            Response::builder()
                .status(status(n))
                .body(full(format!("answer {n}")))
                .unwrap()
        }
    })
    .await;
    (addr, log)
}

/// Sends `method` to `url` with `body`; returns status, headers and body text.
pub async fn send(
    method: &str,
    url: &str,
    body: Vec<u8>,
) -> (http::StatusCode, http::HeaderMap, String) {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = http1_client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// An address where nothing listens: connections are refused at once. (A port bound and
/// released could be taken again by a test running in parallel.)
pub fn dead_endpoint() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}
