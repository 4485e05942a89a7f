//! One endpoint's idle HTTP/1.1 keep-alive connections: a bounded LIFO stack.
//!
//! Check-out pops the most recently used connection that is ready (the warmest, and it
//! leaves the coldest ones to time out); check-in happens when a response body ends
//! (see [`PooledBody`](super::PooledBody)). A connection whose dispatcher is closed or
//! busy is dropped, not returned.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use super::pool::{PoolConfig, Pools, SendError};
use super::tls::UpstreamTls;
use crate::core::body::{ConnectionHome, Lease, ProxyBody};

/// An idle connection and since when it is idle.
#[derive(Debug)]
struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

/// Idle HTTP/1.1 connections to one endpoint.
#[derive(Debug)]
pub(crate) struct Http1Pool {
    /// Most recently returned last; never longer than `max_idle`.
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Http1Pool {
    pub(super) fn new(config: &PoolConfig) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle: config.max_idle_per_endpoint,
            idle_timeout: config.idle_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        match self.idle.lock() {
            Ok(idle) => idle,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Sends `request` on an idle connection, or on a new one (over `tls`, when given)
    /// when none is ready.
    ///
    /// A request that a pooled connection gave back unsent (it closed as the request
    /// arrived) is sent on the next one; only a failure to connect is a `Connect` error.
    pub(super) async fn send(
        self: &Arc<Self>,
        pools: &Arc<Pools>,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        while let Some(mut sender) = self.checkout() {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.lease(response, sender)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Upstream(error.into_error())),
                },
            }
        }
        let mut sender = match pools.connect_http1(addr, tls).await {
            Ok(sender) => sender,
            Err(error) => return Err(SendError::Connect(error, Box::new(request))),
        };
        match sender.send_request(request).await {
            Ok(response) => Ok(self.lease(response, sender)),
            Err(error) => Err(SendError::Upstream(error)),
        }
    }

    fn lease(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: SendRequest<ProxyBody>,
    ) -> Response<ProxyBody> {
        super::pool::leased(
            response,
            Lease::Http1 {
                sender,
                home: self.clone(),
            },
        )
    }

    /// The most recently returned connection that can take a request now.
    fn checkout(&self) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.lock();
        while let Some(candidate) = idle.pop() {
            if candidate.since.elapsed() > self.idle_timeout {
                // Every connection below it has been idle longer still.
                idle.clear();
                return None;
            }
            if candidate.sender.is_ready() {
                return Some(candidate.sender);
            }
        }
        None
    }

    fn push(&self, sender: SendRequest<ProxyBody>) {
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than `timeout` or closed by the peer; returns
    /// how many stay.
    pub(super) fn close_idle(&self, timeout: Duration) -> usize {
        let mut idle = self.lock();
        idle.retain(|conn| conn.since.elapsed() <= timeout && !conn.sender.is_closed());
        idle.len()
    }

    /// Idle connections held now.
    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

impl ConnectionHome for Http1Pool {
    /// Returns a connection whose exchange is complete. One not ready yet (its task has
    /// not yet seen the end of the exchange) is waited for off the request path, at most
    /// the idle timeout; a closed one is dropped.
    fn checkin(self: Arc<Self>, mut sender: SendRequest<ProxyBody>) {
        if sender.is_ready() {
            self.push(sender);
            return;
        }
        if sender.is_closed() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self;
        runtime.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(pool.idle_timeout, sender.ready()).await {
                pool.push(sender);
            }
        });
    }
}
