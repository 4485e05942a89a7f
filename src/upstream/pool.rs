//! remora's own connection pools: one per upstream endpoint, holding that endpoint's
//! HTTP/1.1 keep-alive connections and its HTTP/2 connections, and how connections are
//! made.
//!
//! [`UpstreamClients`] owns the pools of one config. A request looks its endpoint's pool
//! up (a read lock on a map, keyed by the address and the TLS settings, so plaintext and
//! TLS connections, or connections of two TLS configs, to one address never mix),
//! checks a connection out, and gets back the response whose body frees what it holds:
//! the HTTP/1 connection returns to its pool
//! ([`ResponseBody`](crate::core::http1::ResponseBody)), or the HTTP/2 stream slot is
//! freed ([`PooledBody`]), when the response body ends. No task is spawned per request.
//! An HTTP/1 connection has no task: the call that checked it out drives it. An HTTP/2
//! connection has one task for its I/O (and one asleep for its keep-alive); each call
//! sends its request and pipes its body from its own task (`exchange`), spawning only a
//! request body still streaming when the answer arrives. One reaper per
//! [`UpstreamClients`] closes connections idle for longer than the idle timeout.

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use http::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::http1::Http1Pool;
use super::http2::{handshake as http2_handshake, Connection as Http2Connection, Http2Pool};
use super::pending::PoolMetrics;
use super::tls::{TlsError, UpstreamTls};
use crate::core::addr_map::AddrMap;
use crate::core::body::{BoxError, ProxyBody};
use crate::core::http1::Connection;
use crate::core::stream::UpstreamStream;

/// How connections to upstream endpoints are made and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Time allowed to establish a TCP connection, and then its TLS handshake.
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
    /// Connects under way to one endpoint at once, at most (a burst on a cold pool
    /// must not flood the endpoint's accept queue); 0 counts as 1.
    pub max_connecting_per_endpoint: usize,
    /// Calls of one endpoint waiting for a connection, at most; more are refused at once.
    pub max_pending_per_endpoint: usize,
    /// How long a call waits for a connection (one released by another call, or a
    /// connect slot) before it fails.
    pub pending_timeout: Duration,
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
    /// The HTTP/1 handshake failed.
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake: {0}")]
    Http2Handshake(#[source] h2::Error),
    /// The endpoint's HTTP/2 connections refused the request this many times in a row
    /// (each had closed, or the server had sent GOAWAY): nothing was sent.
    #[error("refused by {0} closing HTTP/2 connections in a row")]
    Refused(usize),
    /// The TLS handshake failed or timed out.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No connection was tried: the endpoint's pending queue already held this many
    /// calls.
    #[error("no connection free and the endpoint's pending queue is full ({0} calls waiting)")]
    QueueFull(usize),
    /// No connection was free, nor a connect slot, within the pending timeout.
    #[error("no connection free within the pending timeout ({0:?})")]
    QueueTimeout(Duration),
}

impl ConnectError {
    /// The `reason` label of a failed connect; `None` for a call the pending queue
    /// refused, which tried none.
    pub fn reason(&self) -> Option<&'static str> {
        Some(match self {
            Self::Timeout(_) => "timeout",
            Self::Io(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
            Self::Tls(_) => "tls",
            Self::Io(_) | Self::Handshake(_) | Self::Http2Handshake(_) | Self::Refused(_) => {
                "other"
            }
            Self::QueueFull(_) | Self::QueueTimeout(_) => return None,
        })
    }
}

/// An endpoint pool's connections at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCount {
    /// Waiting for a call: pooled HTTP/1.1 connections, HTTP/2 ones without a stream.
    pub idle: usize,
    /// Carrying a call: checked-out HTTP/1.1 connections, HTTP/2 ones with a stream.
    pub active: usize,
}

impl ConnectionCount {
    /// Adds `other`'s connections to these.
    pub fn add(&mut self, other: Self) {
        self.idle += other.idle;
        self.active += other.active;
    }
}

/// Counts a connection among its pool's open ones for as long as its task runs.
#[derive(Debug)]
pub(super) struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    /// One more of `open`.
    pub(super) fn count(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why one exchange with an endpoint failed.
pub(super) enum SendError {
    /// No connection could be made: nothing was sent, and the request is given back.
    Connect(ConnectError, Box<Request<ProxyBody>>),
    /// The exchange broke after the connection was made.
    Upstream(BoxError),
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
    http2: h2::client::Builder,
    /// Endpoint and TLS settings -> its pool. Entries are added on first use and removed
    /// by the reaper once they hold no connection.
    endpoints: RwLock<EndpointPools>,
    /// Whether the reaper task runs (started with the first connection, inside the
    /// runtime).
    reaper: AtomicBool,
    /// The pending queues' metrics.
    pub(super) metrics: PoolMetrics,
}

/// The pools of every endpoint: plaintext ones by address, TLS ones by address and
/// [`UpstreamTls`] id, so that connections made with different TLS settings (or none)
/// never mix.
///
/// NOTE: two maps rather than one keyed by `(address, Option<id>)`: a plaintext request
/// hashes the address alone, as it did before TLS existed (the hot path's cost).
#[derive(Debug, Default)]
struct EndpointPools {
    plaintext: AddrMap<SocketAddr, Arc<EndpointPool>>,
    tls: AddrMap<(SocketAddr, NonZeroU64), Arc<EndpointPool>>,
}

impl EndpointPools {
    fn get(&self, addr: SocketAddr, tls: Option<&Arc<UpstreamTls>>) -> Option<&Arc<EndpointPool>> {
        match tls {
            None => self.plaintext.get(&addr),
            Some(tls) => self.tls.get(&(addr, tls.id())),
        }
    }

    fn get_or_insert(
        &mut self,
        addr: SocketAddr,
        tls: Option<&Arc<UpstreamTls>>,
        config: &PoolConfig,
        metrics: &PoolMetrics,
    ) -> Arc<EndpointPool> {
        let make = || Arc::new(EndpointPool::new(addr, tls.cloned(), config, metrics));
        match tls {
            None => self.plaintext.entry(addr).or_insert_with(make).clone(),
            Some(tls) => self
                .tls
                .entry((addr, tls.id()))
                .or_insert_with(make)
                .clone(),
        }
    }

    /// Keeps the pools for which `keep` says so.
    fn retain(&mut self, mut keep: impl FnMut(&Arc<EndpointPool>) -> bool) {
        self.plaintext.retain(|_, pool| keep(pool));
        self.tls.retain(|_, pool| keep(pool));
    }

    #[cfg(test)]
    fn values(&self) -> impl Iterator<Item = &Arc<EndpointPool>> {
        self.plaintext.values().chain(self.tls.values())
    }
}

/// One endpoint's connections, all made with the same TLS settings (or none).
#[derive(Debug)]
pub(super) struct EndpointPool {
    pub(super) addr: SocketAddr,
    /// How its connections speak TLS; `None`: plaintext.
    pub(super) tls: Option<Arc<UpstreamTls>>,
    pub(super) http1: Arc<Http1Pool>,
    pub(super) http2: Http2Pool,
}

impl UpstreamClients {
    /// Pools with `config`, their queues counted in metrics of their own (see
    /// [`Self::with_metrics`]).
    pub fn new(config: PoolConfig) -> Self {
        Self::with_metrics(config, PoolMetrics::default())
    }

    /// Pools with `config`, their queues counted in `metrics`.
    pub fn with_metrics(config: PoolConfig, metrics: PoolMetrics) -> Self {
        let http1 = http1::Builder::new();
        let http2 = super::http2::builder();
        Self {
            pools: Arc::new(Pools {
                config,
                http1,
                http2,
                endpoints: RwLock::new(EndpointPools::default()),
                reaper: AtomicBool::new(false),
                metrics,
            }),
        }
    }

    /// The pool settings.
    pub fn config(&self) -> &PoolConfig {
        &self.pools.config
    }

    /// The pool of `addr` reached with `tls` (`None`: plaintext), made on first use.
    pub(super) fn endpoint(
        &self,
        addr: SocketAddr,
        tls: Option<&Arc<UpstreamTls>>,
    ) -> Arc<EndpointPool> {
        if let Ok(endpoints) = self.pools.endpoints.read() {
            if let Some(pool) = endpoints.get(addr, tls) {
                return pool.clone();
            }
        }
        let mut endpoints = match self.pools.endpoints.write() {
            Ok(endpoints) => endpoints,
            Err(poisoned) => poisoned.into_inner(),
        };
        endpoints.get_or_insert(addr, tls, &self.pools.config, &self.pools.metrics)
    }

    /// The pools, for sending.
    pub(super) fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }

    /// The connections of the pool of `addr` reached with `tls` (`None`: plaintext), if
    /// it has a pool (a call to it made one). Read when metrics are scraped.
    pub fn connections(
        &self,
        addr: SocketAddr,
        tls: Option<&Arc<UpstreamTls>>,
    ) -> Option<ConnectionCount> {
        let endpoints = match self.pools.endpoints.read() {
            Ok(endpoints) => endpoints,
            Err(poisoned) => poisoned.into_inner(),
        };
        let pool = endpoints.get(addr, tls)?;
        let mut count = pool.http1.connections();
        count.add(pool.http2.connections());
        Some(count)
    }

    /// Idle connections held now, HTTP/1 and HTTP/2.
    #[cfg(test)]
    pub(super) fn idle_connections(&self) -> usize {
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
    fn new(
        addr: SocketAddr,
        tls: Option<Arc<UpstreamTls>>,
        config: &PoolConfig,
        metrics: &PoolMetrics,
    ) -> Self {
        Self {
            addr,
            tls,
            http1: Arc::new(Http1Pool::new(config, metrics)),
            http2: Http2Pool::new(config, metrics),
        }
    }
}

impl Pools {
    /// A new HTTP/1.1 connection to `addr` (over `tls`, when given), counted in `open`
    /// while it lives.
    pub(super) async fn connect_http1(
        self: &Arc<Self>,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        open: &Arc<AtomicUsize>,
    ) -> Result<Connection, ConnectError> {
        let stream = self.connect_tcp(addr).await?;
        let io = match tls {
            None => UpstreamStream::Plain(stream),
            Some(tls) => {
                let timeout = self.config.connect_timeout;
                UpstreamStream::Tls(Box::new(tls.handshake(stream, false, timeout).await?))
            }
        };
        self.start_reaper();
        Ok(Connection::new(io, open))
    }

    /// A new hyper HTTP/1.1 connection to `addr` (over `tls`, when given) for a request
    /// that asks for an upgrade, driven by its own task, which counts in `open` while it
    /// runs.
    pub(super) async fn connect_upgrade(
        self: &Arc<Self>,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        open: &Arc<AtomicUsize>,
    ) -> Result<http1::SendRequest<ProxyBody>, ConnectError> {
        let stream = self.connect_tcp(addr).await?;
        let sender = match tls {
            None => self.handshake_http1(addr, stream, open).await?,
            Some(tls) => {
                let timeout = self.config.connect_timeout;
                let stream = tls.handshake(stream, false, timeout).await?;
                self.handshake_http1(addr, stream, open).await?
            }
        };
        self.start_reaper();
        Ok(sender)
    }

    async fn handshake_http1<T>(
        &self,
        addr: SocketAddr,
        stream: T,
        open: &Arc<AtomicUsize>,
    ) -> Result<http1::SendRequest<ProxyBody>, ConnectError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = self
            .http1
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let open = OpenConnection::count(open);
        tokio::spawn(async move {
            let _open = open;
            // Upgrades: a 101 hands the connection's bytes to `hyper::upgrade::on`.
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%addr, %error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A new HTTP/2 (prior knowledge, or ALPN `h2` over `tls`) connection to `addr`,
    /// driven by its own task, and the server's stream limit as that task keeps it.
    pub(super) async fn connect_http2(
        self: &Arc<Self>,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
    ) -> Result<Http2Connection, ConnectError> {
        let stream = self.connect_tcp(addr).await?;
        let keep_alive = self.config.http2_keep_alive_interval;
        let connected = match tls {
            None => http2_handshake(&self.http2, keep_alive, addr, stream).await?,
            Some(tls) => {
                let timeout = self.config.connect_timeout;
                let stream = tls.handshake(stream, true, timeout).await?;
                http2_handshake(&self.http2, keep_alive, addr, stream).await?
            }
        };
        self.start_reaper();
        Ok(connected)
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        connect_tcp(addr, self.config.connect_timeout).await
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

/// A TCP connection to `addr` within `timeout`, with Nagle off and keep-alive probes
/// after a minute of silence (so a peer that vanished is noticed).
pub(super) async fn connect_tcp(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
    Ok(stream)
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
        endpoints.retain(|pool| {
            let http1 = pool.http1.close_idle(idle_timeout);
            let http2 = pool.http2.close_idle(idle_timeout);
            // Kept while it holds connections or while a request or a response body
            // (whose connection returns here) still refers to it.
            http1 + http2 > 0 || Arc::strong_count(pool) > 1 || Arc::strong_count(&pool.http1) > 1
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_name_a_bounded_reason() {
        let io = |kind| ConnectError::Io(std::io::Error::from(kind));
        let tls = ConnectError::Tls(TlsError::TimedOut(Duration::from_secs(1)));
        let cases = [
            (io(std::io::ErrorKind::ConnectionRefused), Some("refused")),
            (
                ConnectError::Timeout(Duration::from_secs(1)),
                Some("timeout"),
            ),
            (tls, Some("tls")),
            (io(std::io::ErrorKind::ConnectionReset), Some("other")),
            (ConnectError::QueueFull(4), None),
            (ConnectError::QueueTimeout(Duration::from_secs(1)), None),
        ];
        for (error, reason) in cases {
            assert_eq!(error.reason(), reason, "{error}");
        }
    }
}
