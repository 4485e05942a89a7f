//! One endpoint's idle HTTP/1.1 keep-alive connections: a bounded LIFO stack, and the
//! calls waiting for a connection.
//!
//! The connections are remora's own ([`Connection`]): no task drives them; the call
//! that checks one out writes its request and reads the answer's head, and the answer's
//! body ([`ResponseBody`](crate::core::http1::ResponseBody)) reads the rest and checks
//! the connection back in at its clean end. Check-out pops the most recently used
//! connection (the warmest, and it leaves the coldest ones to time out) that the
//! upstream has neither closed nor written to since. A request asking for an upgrade
//! goes out on a hyper connection of its own, never pooled: once switched, the bytes
//! are a tunnel's.
//!
//! A call that finds no idle connection connects, holding one of the endpoint's few
//! connect slots meanwhile; with every slot taken it waits in the endpoint's
//! [`PendingQueue`] for a checked-in connection or a slot. So a burst on a cold pool
//! opens connections a few at a time, reusing those that free up, instead of sending
//! the endpoint one SYN per call at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{header, Request, Response};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

use super::pending::{PendingQueue, PoolMetrics};
use super::pool::{ConnectError, ConnectionCount, PoolConfig, Pools, SendError};
use super::tls::UpstreamTls;
use crate::core::body::ProxyBody;
use crate::core::clock;
use crate::core::http1::{Connection, ConnectionHome, SendFailure};

/// An idle connection and since when it is idle.
#[derive(Debug)]
struct Idle {
    connection: Connection,
    since: Instant,
}

/// What trying the idle connections came to.
enum Tried {
    /// The request went out on one (or failed after it was sent).
    Done(Result<Response<ProxyBody>, SendError>),
    /// None was ready: the request is given back.
    NoIdle(Request<ProxyBody>),
}

/// What waiting in the pending queue came to.
enum Queued<'a> {
    /// Sent on a released connection, or failed (queue full, timed out).
    Done(Result<Response<ProxyBody>, SendError>),
    /// A connect slot: connect, and send the request on the new connection.
    Connect(SemaphorePermit<'a>, Request<ProxyBody>),
}

/// Idle HTTP/1.1 connections to one endpoint, and the calls waiting for one.
#[derive(Debug)]
pub(crate) struct Http1Pool {
    /// Most recently returned last; never longer than `max_idle`.
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Connect slots: a call holds one while its connection is being established.
    connects: Semaphore,
    /// Calls that found no idle connection and no free slot.
    pending: PendingQueue,
    /// Woken (one waiter per connection) when a connection is checked in while calls
    /// wait.
    released: Notify,
    /// Connections open, idle or not: each connection counts in it while it lives.
    open: Arc<AtomicUsize>,
}

impl Http1Pool {
    pub(super) fn new(config: &PoolConfig, metrics: &PoolMetrics) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle: config.max_idle_per_endpoint,
            idle_timeout: config.idle_timeout,
            connects: Semaphore::new(config.max_connecting_per_endpoint.max(1)),
            pending: PendingQueue::new(
                config.max_pending_per_endpoint,
                config.pending_timeout,
                metrics,
            ),
            released: Notify::new(),
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        match self.idle.lock() {
            Ok(idle) => idle,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Sends `request` on an idle connection, or on a new one (over `tls`, when given)
    /// when none is ready and a connect slot is free; else it waits in the endpoint's
    /// pending queue for either.
    ///
    /// A request that a pooled connection gave back unsent (it closed as the request
    /// arrived) is sent on the next one; only a failure to connect (or to get a
    /// connection from the queue) is a `Connect` error.
    pub(super) async fn send(
        self: &Arc<Self>,
        pools: &Arc<Pools>,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        // A scan of the names, not a hashed lookup: almost no request asks.
        if request.headers().keys().any(|name| name == header::UPGRADE) {
            return Box::pin(self.send_upgrade(pools, addr, tls, request)).await;
        }
        let request = match self.send_on_idle(request).await {
            Tried::Done(result) => return result,
            Tried::NoIdle(request) => request,
        };
        let (permit, request) = match self.connects.try_acquire() {
            Ok(permit) => (permit, request),
            // Boxed, as the connect below: room for the rare ways is not kept in the
            // future of every call (8.4 KB with them, 2.6 KB without).
            Err(_) => match Box::pin(self.wait(request)).await {
                Queued::Done(result) => return result,
                Queued::Connect(permit, request) => (permit, request),
            },
        };
        let connected = Box::pin(pools.connect_http1(addr, tls, &self.open)).await;
        drop(permit);
        let connection = match connected {
            Ok(connection) => connection,
            Err(error) => return Err(SendError::Connect(error, Box::new(request))),
        };
        match connection.send(request, self.home()).await {
            Ok(response) => Ok(response.map(|body| ProxyBody::Http1 { body })),
            Err(SendFailure::Unsent(request)) => Err(SendError::Upstream(
                format!("connection closed before {} was sent", request.method()).into(),
            )),
            Err(SendFailure::Failed(error)) => Err(SendError::Upstream(error.into())),
        }
    }

    /// Sends `request`, which asks for an upgrade, on a new hyper connection that never
    /// returns to the pool.
    async fn send_upgrade(
        &self,
        pools: &Arc<Pools>,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let mut sender = match pools.connect_upgrade(addr, tls, &self.open).await {
            Ok(sender) => sender,
            Err(error) => return Err(SendError::Connect(error, Box::new(request))),
        };
        match sender.send_request(request).await {
            Ok(response) => Ok(response.map(ProxyBody::streamed)),
            Err(error) => Err(SendError::Upstream(error.into())),
        }
    }

    /// Where this pool's connections go back: the pool itself.
    fn home(self: &Arc<Self>) -> Arc<dyn ConnectionHome> {
        self.clone()
    }

    /// Sends `request` on the most recently returned connection that takes it, if any.
    async fn send_on_idle(self: &Arc<Self>, mut request: Request<ProxyBody>) -> Tried {
        while let Some(connection) = self.checkout() {
            match connection.send(request, self.home()).await {
                Ok(response) => {
                    return Tried::Done(Ok(response.map(|body| ProxyBody::Http1 { body })))
                }
                Err(SendFailure::Unsent(unsent)) => request = *unsent,
                Err(SendFailure::Failed(error)) => {
                    return Tried::Done(Err(SendError::Upstream(error.into())))
                }
            }
        }
        Tried::NoIdle(request)
    }

    /// Waits in the pending queue until a connection is released (and sends `request`
    /// on it) or a connect slot frees up, whichever comes first, within the pending
    /// timeout.
    async fn wait(self: &Arc<Self>, mut request: Request<ProxyBody>) -> Queued<'_> {
        let _place = match self.pending.enter() {
            Ok(place) => place,
            Err(error) => return Queued::Done(Err(SendError::Connect(error, Box::new(request)))),
        };
        // Both kept across wake-ups: the connect slot is granted in arrival order.
        let slot = self.connects.acquire();
        tokio::pin!(slot);
        let deadline = tokio::time::sleep(self.pending.timeout());
        tokio::pin!(deadline);
        loop {
            // Looked for after taking a place: a connection checked in before it, while
            // nobody was counted as waiting, woke nobody.
            request = match self.send_on_idle(request).await {
                Tried::Done(result) => return Queued::Done(result),
                Tried::NoIdle(request) => request,
            };
            tokio::select! {
                biased;
                permit = &mut slot => {
                    // The semaphore is never closed.
                    if let Ok(permit) = permit {
                        return Queued::Connect(permit, request);
                    }
                }
                () = self.released.notified() => {}
                () = &mut deadline => {
                    let error = ConnectError::QueueTimeout(self.pending.timeout());
                    return Queued::Done(Err(SendError::Connect(error, Box::new(request))));
                }
            }
        }
    }

    /// The most recently returned connection that can take a request now.
    fn checkout(&self) -> Option<Connection> {
        let mut idle = self.lock();
        while let Some(mut candidate) = idle.pop() {
            if clock::std_elapsed(candidate.since) > self.idle_timeout {
                // Every connection below it has been idle longer still.
                idle.clear();
                return None;
            }
            if candidate.connection.is_reusable() {
                return Some(candidate.connection);
            }
        }
        None
    }

    fn push(&self, connection: Connection) {
        {
            let mut idle = self.lock();
            if idle.len() >= self.max_idle {
                return;
            }
            idle.push(Idle {
                connection,
                since: clock::std_now(),
            });
        }
        // After the push: a call that takes its place in the queue after this load
        // looks at the idle connections before it waits.
        if self.pending.has_waiters() {
            self.released.notify_one();
        }
    }

    /// Closes connections idle for longer than `timeout` or closed by the peer, and
    /// has those that stay give back their read buffers (the reaper calls this every
    /// half idle timeout: a connection in use takes a buffer again at once); returns how
    /// many stay.
    pub(super) fn close_idle(&self, timeout: Duration) -> usize {
        let mut idle = self.lock();
        idle.retain_mut(|conn| conn.since.elapsed() <= timeout && conn.connection.is_reusable());
        for conn in idle.iter_mut() {
            conn.connection.release_buffer();
        }
        idle.len()
    }

    /// Its connections now: the idle ones still open, and the other open ones.
    pub(super) fn connections(&self) -> ConnectionCount {
        let idle = self.lock().len();
        let open = self.open.load(Ordering::Relaxed);
        ConnectionCount {
            idle,
            active: open.saturating_sub(idle),
        }
    }

    /// Idle connections held now.
    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

impl ConnectionHome for Http1Pool {
    /// Takes back a connection whose exchange is complete.
    fn checkin(self: Arc<Self>, connection: Connection) {
        self.push(connection);
    }
}
