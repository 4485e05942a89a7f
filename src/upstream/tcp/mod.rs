//! TCP passthrough: a client connection is forwarded whole to one endpoint, and its
//! bytes copied both ways as they are.
//!
//! - [`TcpForward`]: the TCP counterpart of [`Forward`](super::Forward). It picks an
//!   endpoint from the service's balancer, connects (within the connect timeout, then a
//!   TLS handshake with ALPN `remora-tcp` when the service's [`EndpointTls`] says so),
//!   and on a failed connect tries another endpoint, up to the configured attempts. Each
//!   attempt's outcome goes to the endpoint observers (outlier ejection), a connect
//!   failure as one; the connection then counts as one unit of load on its endpoint for
//!   as long as it is open ([`OpenConnection`]).
//! - `splice`: the copy both ways, with the idle timeout and byte counting;
//! - `metrics`: connections forwarded, open and given up, and bytes, per service.
//!
//! Nothing here accepts connections: the serve floor's TCP listener does, and hands
//! each one to a [`TcpForward`] and then to [`splice`].

mod metrics;
mod splice;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Response;

use super::pool::{connect_tcp, ConnectError};
use super::tls::EndpointTls;
use super::EndpointObserver;
use crate::balance::{Endpoint, EndpointSet, OpenConnection};
use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;

pub use crate::core::stream::UpstreamStream;
pub use metrics::{ByteCounters, FailedReason, TcpMetrics, TcpSeries};
pub use splice::{splice, SpliceEnd, Spliced};

/// How a service's TCP connections are made and kept. Valid by construction
/// ([`TcpConfig::try_new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// Time allowed for the TCP connection to an endpoint, and then for its TLS
    /// handshake (non-zero).
    connect_timeout: Duration,
    /// Both directions quiet this long closes the connection (non-zero).
    idle_timeout: Duration,
    /// Endpoints tried per client connection (at least 1).
    connect_attempts: u32,
    /// Connections open at once on the listener (at least 1).
    max_connections: usize,
}

/// What is wrong with a TCP configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcpConfigError {
    /// A zero connect timeout.
    #[error("connect timeout must be non-zero")]
    ZeroConnectTimeout,
    /// A zero idle timeout: every connection would close at once.
    #[error("idle_timeout must be non-zero")]
    ZeroIdleTimeout,
    /// `connect_attempts: 0`: no connection could ever be forwarded.
    #[error("connect_attempts must be at least 1")]
    NoConnectAttempts,
    /// `max_connections: 0`: every connection would be refused.
    #[error("max_connections must be at least 1")]
    NoConnections,
}

impl TcpConfig {
    /// A TCP configuration, refusing one under which no connection could be forwarded.
    pub fn try_new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        connect_attempts: u32,
        max_connections: usize,
    ) -> Result<Self, TcpConfigError> {
        if connect_timeout.is_zero() {
            return Err(TcpConfigError::ZeroConnectTimeout);
        }
        if idle_timeout.is_zero() {
            return Err(TcpConfigError::ZeroIdleTimeout);
        }
        if connect_attempts == 0 {
            return Err(TcpConfigError::NoConnectAttempts);
        }
        if max_connections == 0 {
            return Err(TcpConfigError::NoConnections);
        }
        Ok(Self {
            connect_timeout,
            idle_timeout,
            connect_attempts,
            max_connections,
        })
    }

    /// Both directions quiet this long closes a connection.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Connections open at once on the listener, at most.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Endpoints tried per client connection.
    pub fn connect_attempts(&self) -> u32 {
        self.connect_attempts
    }
}

/// Why a client connection could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum TcpConnectError {
    /// No endpoint was ready to try.
    #[error("service {0}: no healthy endpoint")]
    NoEndpoint(Arc<str>),
    /// Every endpoint tried failed; the last one's error.
    #[error("endpoint {endpoint}: {source} (after {attempts} attempt(s))")]
    Connect {
        /// The last endpoint tried.
        endpoint: SocketAddr,
        /// Endpoints tried.
        attempts: u32,
        /// Why the last one failed.
        #[source]
        source: ConnectError,
    },
}

/// A forwarded connection's upstream side: the stream and the load it puts on its
/// endpoint until dropped.
#[derive(Debug)]
pub struct Connected {
    /// The stream to the endpoint.
    pub stream: UpstreamStream,
    /// Counts the connection on its endpoint while held.
    pub open: OpenConnection,
}

/// Forwards a service's TCP connections: one endpoint per connection, tried again on
/// another when connecting fails. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TcpForward {
    shared: Arc<TcpForwardShared>,
}

#[derive(Clone, Debug)]
struct TcpForwardShared {
    /// The service's name, for errors and logs.
    service: Arc<str>,
    /// Where to connect.
    endpoints: Arc<EndpointSet>,
    config: TcpConfig,
    /// Told of every connect attempt's outcome.
    observers: Arc<[Arc<dyn EndpointObserver>]>,
    /// Which endpoints are reached over TLS.
    tls: EndpointTls,
}

impl TcpForward {
    /// A forwarder of `service`'s connections to `endpoints`, in plaintext.
    pub fn new(service: Arc<str>, endpoints: Arc<EndpointSet>, config: TcpConfig) -> Self {
        Self {
            shared: Arc::new(TcpForwardShared {
                service,
                endpoints,
                config,
                observers: Arc::from(Vec::new()),
                tls: EndpointTls::Plaintext,
            }),
        }
    }

    /// Adds observers told of every connect attempt's outcome.
    pub fn with_observers(mut self, observers: Vec<Arc<dyn EndpointObserver>>) -> Self {
        Arc::make_mut(&mut self.shared).observers = Arc::from(observers);
        self
    }

    /// Reaches the endpoints over TLS as `tls` says (default: plaintext).
    pub fn with_tls(mut self, tls: EndpointTls) -> Self {
        Arc::make_mut(&mut self.shared).tls = tls;
        self
    }

    /// Its settings.
    pub fn config(&self) -> &TcpConfig {
        &self.shared.config
    }

    /// A connection to an endpoint: the balancer's pick, then another endpoint for each
    /// failed attempt (never one that failed already), up to `connect_attempts`.
    pub async fn connect(&self) -> Result<Connected, TcpConnectError> {
        let this = &self.shared;
        let mut failed: Vec<SocketAddr> = Vec::new();
        let mut last_error = None;
        while failed.len() < this.config.connect_attempts as usize {
            let Some(endpoint) = this.endpoints.pick_for(None, &failed) else {
                break;
            };
            // Avoidance is only a preference of the pick: when every ready endpoint
            // failed already, it offers one of them again. There is nothing new to try.
            if failed.contains(&endpoint.addr) {
                break;
            }
            let attempt = this.endpoints.start(&endpoint);
            let result = self.connect_to(&endpoint).await;
            let elapsed = attempt.finish(result.is_ok());
            self.observe(&endpoint, result.as_ref().err(), elapsed);
            match result {
                Ok(stream) => {
                    return Ok(Connected {
                        stream,
                        open: OpenConnection::new(endpoint),
                    })
                }
                Err(error) => {
                    tracing::debug!(service = %this.service, endpoint = %endpoint.addr, %error, "TCP connect failed");
                    failed.push(endpoint.addr);
                    last_error = Some((endpoint.addr, error));
                }
            }
        }
        match last_error {
            Some((endpoint, source)) => Err(TcpConnectError::Connect {
                endpoint,
                attempts: u32::try_from(failed.len()).unwrap_or(u32::MAX),
                source,
            }),
            None => Err(TcpConnectError::NoEndpoint(this.service.clone())),
        }
    }

    /// One attempt: TCP, then TLS when the endpoint is reached over it.
    async fn connect_to(&self, endpoint: &Endpoint) -> Result<UpstreamStream, ConnectError> {
        let timeout = self.shared.config.connect_timeout;
        let stream = connect_tcp(endpoint.addr, timeout).await?;
        match self.shared.tls.of(endpoint) {
            None => Ok(UpstreamStream::Plain(stream)),
            Some(tls) => {
                let stream = tls.handshake_tcp(stream, timeout).await?;
                Ok(UpstreamStream::Tls(Box::new(stream)))
            }
        }
    }

    /// Tells the observers how a connect attempt ended.
    ///
    /// NOTE: observers judge HTTP outcomes; a connect failure is the same
    /// `ProxyError::Connect` an HTTP attempt fails with, and a connection made stands
    /// for an answer (an empty 200). What happens on the connection later is not
    /// observed: a TCP stream has no outcome to judge.
    fn observe(&self, endpoint: &Endpoint, error: Option<&ConnectError>, elapsed: Duration) {
        let observers = &self.shared.observers;
        if observers.is_empty() {
            return;
        }
        let result = match error {
            None => Ok(Response::new(ProxyBody::empty())),
            Some(error) => Err(ProxyError::Connect {
                endpoint: endpoint.addr.to_string(),
                source: error.to_string().into(),
                unsent: None,
            }),
        };
        for observer in observers.iter() {
            observer.observe(endpoint, &result, elapsed);
        }
    }
}

#[cfg(test)]
mod tests;
