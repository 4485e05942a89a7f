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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use tokio::sync::Notify;

use super::pending::{PendingQueue, PoolMetrics};
use super::pool::{ConnectError, ConnectionCount, PoolConfig, Pools, SendError};
use super::tls::UpstreamTls;
use crate::core::body::{PooledBody, ProxyBody, StreamSlot};
use crate::core::clock;

/// One HTTP/2 connection of the set.
#[derive(Debug)]
struct Connection {
    sender: SendRequest<ProxyBody>,
    /// Streams in flight: requests sent whose response body has not ended.
    streams: Arc<AtomicUsize>,
    /// The server's `MAX_CONCURRENT_STREAMS`, as the connection's task last saw it.
    max_streams: Arc<AtomicUsize>,
    /// When the last stream was opened.
    last_used: Instant,
}

/// The connection set and the connects under way.
#[derive(Debug, Default)]
struct Connections {
    open: Vec<Connection>,
    /// Connections being established (they count toward the maximum).
    connecting: usize,
}

/// A sent request's outcome, its body holding `slot` until it ends.
fn answered(
    sent: Result<Response<hyper::body::Incoming>, hyper::Error>,
    slot: StreamSlot,
) -> Result<Response<ProxyBody>, SendError> {
    match sent {
        Ok(response) => Ok(response.map(|body| ProxyBody::Pooled {
            body: PooledBody::new(body, slot),
        })),
        Err(error) => Err(SendError::Upstream(error.into())),
    }
}

/// A request's next step, decided under the lock and taken after it.
enum Next<S, W> {
    /// Sent on an open connection.
    Sent(S, StreamSlot),
    /// Not sent: open a connection for it.
    Connect(Request<ProxyBody>),
    /// Not sent: wait for a connect under way, then choose again.
    Wait(Request<ProxyBody>, W),
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
        loop {
            let next = {
                let mut connections = self.lock();
                match self.choose(&mut connections) {
                    Choice::Use(index) => {
                        let connection = &mut connections.open[index];
                        connection.last_used = clock::std_now();
                        let slot = StreamSlot::take(&connection.streams);
                        // Queues the request on the connection's task at once.
                        Next::Sent(connection.sender.send_request(request), slot)
                    }
                    Choice::Connect => {
                        connections.connecting += 1;
                        Next::Connect(request)
                    }
                    // Registered under the lock, so the connect's wake-up cannot be missed.
                    Choice::Wait => Next::Wait(request, self.connected.notified()),
                }
            };
            match next {
                Next::Sent(sent, slot) => return answered(sent.await, slot),
                Next::Wait(unsent, notified) => {
                    request = unsent;
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
                }
                Next::Connect(unsent) => {
                    request = unsent;
                    break;
                }
            }
        }
        let connected = Box::pin(pools.connect_http2(addr, tls)).await;
        let sent = {
            let mut connections = self.lock();
            connections.connecting -= 1;
            self.connected.notify_waiters();
            let (mut sender, max_streams) = match connected {
                Ok(connected) => connected,
                Err(error) => return Err(SendError::Connect(error, Box::new(request))),
            };
            let streams = Arc::new(AtomicUsize::new(0));
            let slot = StreamSlot::take(&streams);
            let sent = sender.send_request(request);
            connections.open.push(Connection {
                sender,
                streams,
                max_streams,
                last_used: Instant::now(),
            });
            (sent, slot)
        };
        answered(sent.0.await, sent.1)
    }

    fn choose(&self, connections: &mut Connections) -> Choice {
        connections.open.retain(|c| !c.sender.is_closed());
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
            !idle && !c.sender.is_closed()
        });
        connections.open.len() + connections.connecting
    }

    /// Its open connections now: idle without a stream, active with one.
    pub(super) fn connections(&self) -> ConnectionCount {
        let connections = self.lock();
        let mut count = ConnectionCount::default();
        for connection in connections.open.iter().filter(|c| !c.sender.is_closed()) {
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
