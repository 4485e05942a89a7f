//! One endpoint's HTTP/2 connections: a few multiplexed connections, the least loaded
//! taking the next stream.
//!
//! A stream goes to the connection with the fewest streams in flight. Another
//! connection is opened (up to `http2_max_connections`) when that one already carries
//! `http2_streams_per_connection` streams or the server's `MAX_CONCURRENT_STREAMS`,
//! whichever is lower; at the maximum, the least loaded connection queues the stream
//! until the server allows it. Connections closed by the peer (GOAWAY, failure) are
//! dropped from the set at the next request, so the one after opens a new connection.
//! While the first connections are being made, requests wait for them (at most the
//! maximum is ever being opened at once) in the endpoint's bounded [`PendingQueue`].

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, Notify};
use tokio::task::AbortHandle;

use super::exchange::{self, Failed};
use super::pending::{PendingQueue, PoolMetrics};
use super::pool::{ConnectError, ConnectionCount, PoolConfig, Pools, SendError};
use super::tls::UpstreamTls;
use crate::core::body::{ProxyBody, StreamSlot};
use crate::core::clock;

/// How long a keep-alive PING may wait for its answer before the connection is closed.
pub(super) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How many times one request is refused by connections that close (GOAWAY) before
/// it fails: each refusal drops that connection, so the next try opens another.
const MAX_REFUSALS: usize = 3;

/// One HTTP/2 connection of the set.
#[derive(Debug)]
pub(super) struct Connection {
    sender: SendRequest<Bytes>,
    /// Streams in flight: requests sent whose response body has not ended.
    streams: Arc<AtomicUsize>,
    /// The server's `MAX_CONCURRENT_STREAMS`, as the connection's task last saw it.
    max_streams: Arc<AtomicUsize>,
    /// Set when the connection's task has ended, or the connection refused a stream.
    closed: Arc<AtomicBool>,
    /// When the last stream was opened.
    last_used: Instant,
}

impl Connection {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// The HTTP/2 connection settings of every upstream connection.
pub(super) fn builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    // NOTE: fixed, large windows rather than an adaptive window. Besides flow control,
    // h2 budgets small unread DATA frames per connection at half the connection
    // window; with hundreds of gRPC streams multiplexed on one upstream connection,
    // each holding one small unread message, a small window makes h2 tear the
    // connection down ("too_many_data_frames"). Windows are credit, not memory:
    // nothing is allocated until a peer sends. The rest are hyper's client defaults,
    // which remora used until it spoke to `h2` directly.
    builder
        .initial_window_size(1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .initial_max_send_streams(100)
        .max_frame_size(16 * 1024)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false);
    builder
}

/// Makes `io` an HTTP/2 connection to `addr` and starts its task (and, when the server
/// supports it, a keep-alive that pings every `keep_alive` while streams are open).
pub(super) async fn handshake<T>(
    builder: &h2::client::Builder,
    keep_alive: Duration,
    addr: SocketAddr,
    io: T,
) -> Result<Connection, ConnectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut connection) = builder
        .handshake::<_, Bytes>(io)
        .await
        .map_err(ConnectError::Http2Handshake)?;
    let streams = Arc::new(AtomicUsize::new(0));
    let max_streams = Arc::new(AtomicUsize::new(usize::MAX));
    let closed = Arc::new(AtomicBool::new(false));
    let ping = connection.ping_pong();
    let (published, ended) = (max_streams.clone(), closed.clone());
    // Dropped when the task ends, which tells the keep-alive to stop.
    let (running, stopped) = oneshot::channel::<()>();
    // Its every poll reads the clock at most once (`core::clock`).
    let task = tokio::spawn(clock::scoped(async move {
        let _running = running;
        let result = poll_fn(|cx| {
            let polled = Pin::new(&mut connection).poll(cx);
            // SETTINGS may change it at any time; the pool reads it per request.
            published.store(connection.max_concurrent_send_streams(), Ordering::Relaxed);
            polled
        })
        .await;
        ended.store(true, Ordering::Relaxed);
        if let Err(error) = result {
            tracing::debug!(%addr, %error, "upstream connection ended with an error");
        }
    }));
    if let Some(ping) = ping {
        let watch = KeepAlive {
            ping,
            every: keep_alive,
            streams: streams.clone(),
            closed: closed.clone(),
            task: task.abort_handle(),
        };
        tokio::spawn(watch.run(addr, stopped));
    }
    Ok(Connection {
        sender,
        streams,
        max_streams,
        closed,
        last_used: clock::std_now(),
    })
}

/// A connection's keep-alive: a PING every `every` while it carries a stream.
struct KeepAlive {
    ping: PingPong,
    every: Duration,
    streams: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    /// The connection's task, aborted (its streams failing) when a PONG is late.
    task: AbortHandle,
}

impl KeepAlive {
    /// Runs until the connection's task ends (`stopped`) or a PONG is late.
    async fn run(mut self, addr: SocketAddr, mut stopped: oneshot::Receiver<()>) {
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                () = tokio::time::sleep(self.every) => {}
            }
            if self.streams.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let ponged = tokio::select! {
                _ = &mut stopped => return,
                ponged = tokio::time::timeout(KEEP_ALIVE_TIMEOUT, self.ping.ping(Ping::opaque())) => ponged,
            };
            match ponged {
                Ok(Ok(_)) => {}
                // The connection is going away on its own.
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!(%addr, "upstream connection closed: no PONG within {KEEP_ALIVE_TIMEOUT:?}");
                    self.closed.store(true, Ordering::Relaxed);
                    self.task.abort();
                    return;
                }
            }
        }
    }
}

/// The connection set and the connects under way.
#[derive(Debug, Default)]
struct Connections {
    open: Vec<Connection>,
    /// Connections being established (they count toward the maximum).
    connecting: usize,
}

/// A request's next step, decided under the lock and taken after it.
enum Next<W> {
    /// To send on an open connection (a handle of its own, and its closed flag).
    Send(SendRequest<Bytes>, Arc<AtomicBool>, StreamSlot),
    /// Open a connection for it.
    Connect,
    /// Wait for a connect under way, then choose again.
    Wait(W),
}

/// What a request does next.
enum Choice {
    /// Send on `open[index]`.
    Use(usize),
    /// Open another connection and send on it.
    Connect,
    /// Wait for a connect under way.
    Wait,
}

/// HTTP/2 connections to one endpoint.
#[derive(Debug)]
pub(crate) struct Http2Pool {
    connections: Mutex<Connections>,
    /// Woken when a connect under way ends, for the requests waiting on it.
    connected: Notify,
    max_connections: usize,
    streams_per_connection: usize,
    /// Requests waiting for a connect under way.
    pending: PendingQueue,
}

impl Http2Pool {
    pub(super) fn new(config: &PoolConfig, metrics: &PoolMetrics) -> Self {
        Self {
            connections: Mutex::new(Connections::default()),
            connected: Notify::new(),
            pending: PendingQueue::new(
                config.max_pending_per_endpoint,
                config.pending_timeout,
                metrics,
            ),
            max_connections: config.http2_max_connections,
            streams_per_connection: config.http2_streams_per_connection,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Connections> {
        match self.connections.lock() {
            Ok(connections) => connections,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Sends `request` on the least loaded connection, opening one (over `tls`, when
    /// given) when needed.
    pub(super) async fn send(
        &self,
        pools: &Arc<Pools>,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let mut request = request;
        // A place in the pending queue, and until when, once the request waits.
        let mut queued = None;
        let mut refusals = 0;
        loop {
            let next = {
                let mut connections = self.lock();
                match self.choose(&mut connections) {
                    Choice::Use(index) => {
                        let connection = &mut connections.open[index];
                        connection.last_used = clock::std_now();
                        Next::Send(
                            connection.sender.clone(),
                            connection.closed.clone(),
                            StreamSlot::take(&connection.streams),
                        )
                    }
                    Choice::Connect => {
                        connections.connecting += 1;
                        Next::Connect
                    }
                    // Registered under the lock, so the connect's wake-up cannot be missed.
                    Choice::Wait => Next::Wait(self.connected.notified()),
                }
            };
            let (sender, closed, slot) = match next {
                Next::Send(sender, closed, slot) => (sender, closed, slot),
                Next::Wait(notified) => {
                    if queued.is_none() {
                        let place = match self.pending.enter() {
                            Ok(place) => place,
                            Err(error) => return Err(SendError::Connect(error, Box::new(request))),
                        };
                        let until = tokio::time::Instant::now() + self.pending.timeout();
                        queued = Some((place, until));
                    }
                    let until = queued
                        .as_ref()
                        .map_or_else(tokio::time::Instant::now, |(_, until)| *until);
                    // Boxed, as the connect below: room for the rare ways is not kept
                    // in the future of every call.
                    let waited = Box::pin(tokio::time::timeout_at(until, notified)).await;
                    if waited.is_err() {
                        let error = ConnectError::QueueTimeout(self.pending.timeout());
                        return Err(SendError::Connect(error, Box::new(request)));
                    }
                    continue;
                }
                Next::Connect => {
                    let connected = Box::pin(pools.connect_http2(addr, tls)).await;
                    let mut connections = self.lock();
                    connections.connecting -= 1;
                    self.connected.notify_waiters();
                    let connection = match connected {
                        Ok(connection) => connection,
                        Err(error) => return Err(SendError::Connect(error, Box::new(request))),
                    };
                    let taken = (
                        connection.sender.clone(),
                        connection.closed.clone(),
                        StreamSlot::take(&connection.streams),
                    );
                    connections.open.push(connection);
                    taken
                }
            };
            match exchange::send(sender, request, slot).await {
                Ok(response) => return Ok(response),
                Err(Failed::Upstream(error)) => return Err(SendError::Upstream(error)),
                Err(Failed::Refused(unsent)) => {
                    // Dropped from the set at the next choice; another is opened.
                    closed.store(true, Ordering::Relaxed);
                    refusals += 1;
                    if refusals == MAX_REFUSALS {
                        let error = ConnectError::Refused(refusals);
                        return Err(SendError::Connect(error, unsent));
                    }
                    request = *unsent;
                }
            }
        }
    }

    fn choose(&self, connections: &mut Connections) -> Choice {
        connections.open.retain(|c| !c.is_closed());
        let total = connections.open.len() + connections.connecting;
        let least_loaded = connections
            .open
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.streams.load(Ordering::Relaxed));
        if let Some((index, connection)) = least_loaded {
            let load = connection.streams.load(Ordering::Relaxed);
            let room = self
                .streams_per_connection
                .min(connection.max_streams.load(Ordering::Relaxed));
            // Someone already adding capacity, or no more allowed: share what is open.
            if load < room || connections.connecting > 0 || total >= self.max_connections {
                return Choice::Use(index);
            }
        } else if connections.connecting > 0 {
            return Choice::Wait;
        }
        if total < self.max_connections {
            Choice::Connect
        } else {
            Choice::Wait
        }
    }

    /// Closes connections without streams for longer than `timeout` and those the peer
    /// closed; returns how many stay (open or connecting).
    pub(super) fn close_idle(&self, timeout: Duration) -> usize {
        let mut connections = self.lock();
        connections.open.retain(|c| {
            let idle = c.streams.load(Ordering::Relaxed) == 0 && c.last_used.elapsed() > timeout;
            !idle && !c.is_closed()
        });
        connections.open.len() + connections.connecting
    }

    /// Its open connections now: idle without a stream, active with one.
    pub(super) fn connections(&self) -> ConnectionCount {
        let connections = self.lock();
        let mut count = ConnectionCount::default();
        for connection in connections.open.iter().filter(|c| !c.is_closed()) {
            match connection.streams.load(Ordering::Relaxed) {
                0 => count.idle += 1,
                _ => count.active += 1,
            }
        }
        count
    }

    /// Connections without a stream now.
    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.lock()
            .open
            .iter()
            .filter(|c| c.streams.load(Ordering::Relaxed) == 0)
            .count()
    }
}
