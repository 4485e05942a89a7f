//! remora's own connection pools: one per upstream endpoint, holding that endpoint's
//! HTTP/1.1 keep-alive connections and its HTTP/2 connections, and how connections are
//! made.
//!
//! [`UpstreamClients`] owns the pools of one config. A request looks its endpoint's pool
//! up (a read lock on a map), checks a connection out, and gets back the response with
//! a [`Lease`]: the HTTP/1 connection returns to its pool, or the HTTP/2 stream slot is
//! freed, when the response body ends (see [`PooledBody`]). No task is spawned per
//! request; one task drives each connection, and one reaper per [`UpstreamClients`]
//! closes connections idle for longer than the idle timeout.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::http1::Http1Pool;
use super::http2::{Http2Pool, StreamSlot};
use crate::body::{BoxError, ProxyBody};
use crate::config::UpstreamConfig;

/// How connections to upstream endpoints are made and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Time allowed to establish a TCP connection.
    pub connect_timeout: Duration,
    /// Idle connections (HTTP/1 connections in a pool, HTTP/2 connections without a
    /// stream) are closed after this long.
    pub idle_timeout: Duration,
    /// Idle HTTP/1 connections kept per endpoint; more are closed at check-in.
    pub max_idle_per_endpoint: usize,
    /// HTTP/2 connections per endpoint, at most (≥ 1).
    pub http2_max_connections: usize,
    /// Another HTTP/2 connection is opened (up to the maximum) when every open one
    /// carries this many streams or the server's stream limit, whichever is lower (≥ 1).
    pub http2_streams_per_connection: usize,
    /// How often an HTTP/2 connection with streams in flight is pinged.
    pub http2_keep_alive_interval: Duration,
}

/// A pool setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolConfigError {
    /// `http2_max_connections` is zero.
    #[error("http2 max connections must be at least 1")]
    NoHttp2Connections,
    /// `http2_streams_per_connection` is zero.
    #[error("http2 streams per connection must be at least 1")]
    NoHttp2Streams,
}

impl PoolConfig {
    /// Default HTTP/2 connections per endpoint.
    pub const DEFAULT_HTTP2_MAX_CONNECTIONS: usize = 4;
    /// Default streams per HTTP/2 connection before another one is opened.
    pub const DEFAULT_HTTP2_STREAMS_PER_CONNECTION: usize = 100;

    /// `upstream`'s timeouts, limits and HTTP/2 spread (validation keeps both ≥ 1).
    pub fn from_upstream(upstream: &UpstreamConfig) -> Self {
        Self {
            connect_timeout: upstream.connect_timeout,
            idle_timeout: upstream.pool_idle_timeout,
            max_idle_per_endpoint: upstream.pool_max_idle_per_endpoint,
            http2_max_connections: upstream.http2_connections_per_endpoint.max(1),
            http2_streams_per_connection: upstream.http2_streams_per_connection.max(1),
            http2_keep_alive_interval: Duration::from_secs(30),
        }
    }

    /// Sets the HTTP/2 connection spread; both must be at least 1.
    pub fn with_http2(
        mut self,
        max_connections: usize,
        streams_per_connection: usize,
    ) -> Result<Self, PoolConfigError> {
        if max_connections == 0 {
            return Err(PoolConfigError::NoHttp2Connections);
        }
        if streams_per_connection == 0 {
            return Err(PoolConfigError::NoHttp2Streams);
        }
        self.http2_max_connections = max_connections;
        self.http2_streams_per_connection = streams_per_connection;
        Ok(self)
    }
}

/// Why a connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection did not complete in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The TCP connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The HTTP/2 handshake failed.
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
}

/// Why one exchange with an endpoint failed.
pub(super) enum SendError {
    /// No connection could be made: nothing was sent, and the request is given back.
    Connect(ConnectError, Box<Request<ProxyBody>>),
    /// The exchange broke after the connection was made.
    Upstream(hyper::Error),
}

/// The pools of one config, shared by every service's [`Forward`](super::Forward).
#[derive(Clone, Debug)]
pub struct UpstreamClients {
    pools: Arc<Pools>,
}

/// Every endpoint's pool, and how connections are made.
#[derive(Debug)]
pub(super) struct Pools {
    pub(super) config: PoolConfig,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Endpoint -> its pool. Entries are added on first use and removed by the reaper
    /// once they hold no connection.
    endpoints: RwLock<HashMap<SocketAddr, Arc<EndpointPool>>>,
    /// Whether the reaper task runs (started with the first connection, inside the
    /// runtime).
    reaper: AtomicBool,
}

/// One endpoint's connections.
#[derive(Debug)]
pub(super) struct EndpointPool {
    pub(super) addr: SocketAddr,
    pub(super) http1: Arc<Http1Pool>,
    pub(super) http2: Http2Pool,
}

impl UpstreamClients {
    /// Pools with `config`'s connect timeout and limits (HTTP/2 settings at defaults).
    pub fn new(config: &UpstreamConfig) -> Self {
        Self::with_pool_config(PoolConfig::from_upstream(config))
    }

    /// Pools with `config`.
    pub fn with_pool_config(config: PoolConfig) -> Self {
        let http1 = http1::Builder::new();
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        // NOTE: fixed, large windows rather than the adaptive window. Besides flow
        // control, h2 budgets small unread DATA frames per connection at half the
        // connection window; with hundreds of gRPC streams multiplexed on one upstream
        // connection, each holding one small unread message, a small window makes h2
        // tear the connection down ("too_many_data_frames"). Windows are credit, not
        // memory: nothing is allocated until a peer sends.
        http2
            .timer(TokioTimer::new())
            .initial_stream_window_size(1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            .keep_alive_interval(config.http2_keep_alive_interval)
            .keep_alive_while_idle(false);
        Self {
            pools: Arc::new(Pools {
                config,
                http1,
                http2,
                endpoints: RwLock::new(HashMap::new()),
                reaper: AtomicBool::new(false),
            }),
        }
    }

    /// The pool settings.
    pub fn config(&self) -> &PoolConfig {
        &self.pools.config
    }

    /// `addr`'s pool, made on first use.
    pub(super) fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointPool> {
        if let Ok(endpoints) = self.pools.endpoints.read() {
            if let Some(pool) = endpoints.get(&addr) {
                return pool.clone();
            }
        }
        let mut endpoints = match self.pools.endpoints.write() {
            Ok(endpoints) => endpoints,
            Err(poisoned) => poisoned.into_inner(),
        };
        endpoints
            .entry(addr)
            .or_insert_with(|| Arc::new(EndpointPool::new(addr, &self.pools.config)))
            .clone()
    }

    /// The pools, for sending.
    pub(super) fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    /// Idle connections held now, HTTP/1 and HTTP/2 (for tests and diagnostics).
    pub fn idle_connections(&self) -> usize {
        let endpoints = match self.pools.endpoints.read() {
            Ok(endpoints) => endpoints,
            Err(poisoned) => poisoned.into_inner(),
        };
        endpoints
            .values()
            .map(|pool| pool.http1.idle_count() + pool.http2.idle_count())
            .sum()
    }
}

impl EndpointPool {
    fn new(addr: SocketAddr, config: &PoolConfig) -> Self {
        Self {
            addr,
            http1: Arc::new(Http1Pool::new(config)),
            http2: Http2Pool::new(config),
        }
    }
}

impl Pools {
    /// A new HTTP/1.1 connection to `addr`, driven by its own task.
    pub(super) async fn connect_http1(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<http1::SendRequest<ProxyBody>, ConnectError> {
        let stream = self.connect_tcp(addr).await?;
        let (sender, connection) = self
            .http1
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            // Upgrades: a 101 hands the connection's bytes to `hyper::upgrade::on`.
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%addr, %error, "upstream connection ended with an error");
            }
        });
        self.start_reaper();
        Ok(sender)
    }

    /// A new HTTP/2 (prior knowledge) connection to `addr`, driven by its own task,
    /// and the server's stream limit as that task keeps it.
    pub(super) async fn connect_http2(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<(http2::SendRequest<ProxyBody>, Arc<AtomicUsize>), ConnectError> {
        let stream = self.connect_tcp(addr).await?;
        let (sender, mut connection) = self
            .http2
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let max_streams = Arc::new(AtomicUsize::new(usize::MAX));
        let published = max_streams.clone();
        tokio::spawn(async move {
            let ended = std::future::poll_fn(|cx| {
                let polled = Pin::new(&mut connection).poll(cx);
                // SETTINGS may change it at any time; the pool reads it per request.
                published.store(connection.current_max_send_streams(), Ordering::Relaxed);
                polled
            })
            .await;
            if let Err(error) = ended {
                tracing::debug!(%addr, %error, "upstream connection ended with an error");
            }
        });
        self.start_reaper();
        Ok((sender, max_streams))
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        let timeout = self.config.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        stream.set_nodelay(true)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
        Ok(stream)
    }

    /// Starts the reaper once; it ends when the pools are dropped.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let pools = Arc::downgrade(self);
        let every = (self.config.idle_timeout / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(reap(pools, every));
    }
}

/// Every `every`, closes connections idle for longer than the idle timeout and forgets
/// endpoints without connections.
async fn reap(pools: Weak<Pools>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pools) = pools.upgrade() else {
            return;
        };
        let mut endpoints = match pools.endpoints.write() {
            Ok(endpoints) => endpoints,
            Err(poisoned) => poisoned.into_inner(),
        };
        let idle_timeout = pools.config.idle_timeout;
        endpoints.retain(|_, pool| {
            let http1 = pool.http1.close_idle(idle_timeout);
            let http2 = pool.http2.close_idle(idle_timeout);
            // Kept while it holds connections or while a request or a response body
            // (whose connection returns here) still refers to it.
            http1 + http2 > 0 || Arc::strong_count(pool) > 1 || Arc::strong_count(&pool.http1) > 1
        });
    }
}

/// What a response holds of its connection until its body ends.
#[derive(Debug)]
pub(super) enum Lease {
    /// An HTTP/1 connection, returned to `pool` if the body ended cleanly.
    Http1 {
        sender: http1::SendRequest<ProxyBody>,
        pool: Arc<Http1Pool>,
    },
    /// A stream slot on an HTTP/2 connection.
    Http2(StreamSlot),
}

impl Lease {
    /// The exchange is over; `complete` says whether the body was read to its end.
    fn release(self, complete: bool) {
        match self {
            Self::Http1 { sender, pool } if complete => pool.checkin(sender),
            // An unfinished HTTP/1 exchange cannot be resumed: the connection closes.
            Self::Http1 { .. } => {}
            Self::Http2(slot) => drop(slot),
        }
    }
}

/// An upstream's response body. When it ends (or is dropped after its last frame) the
/// HTTP/1 connection goes back to its pool, or the HTTP/2 stream slot is freed; dropped
/// earlier, the HTTP/1 connection is closed (its unread rest cannot be skipped).
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl PooledBody {
    pub(super) fn new(body: Incoming, lease: Lease) -> Self {
        let mut this = Self {
            body,
            lease: Some(lease),
        };
        // Bodiless answers (204, 304, HEAD) may never be polled: release now.
        if this.body.is_end_stream() {
            this.release(true);
        }
        this
    }

    fn release(&mut self, complete: bool) {
        if let Some(lease) = self.lease.take() {
            lease.release(complete);
        }
    }
}

/// `response` with its body wrapped to release `lease` at the body's end.
pub(super) fn leased(response: Response<Incoming>, lease: Lease) -> Response<ProxyBody> {
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // The connection now belongs to the upgrade: it never returns to the pool.
        lease.release(false);
        return response.map(ProxyBody::streamed);
    }
    response.map(|body| ProxyBody::Pooled {
        body: PooledBody::new(body, lease),
    })
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(true),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(true),
            Poll::Ready(Some(Err(_))) => self.release(false),
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let complete = self.body.is_end_stream();
        self.release(complete);
    }
}
