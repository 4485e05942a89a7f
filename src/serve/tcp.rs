//! TCP passthrough listeners: a `protocol: tcp` service's own port, and the inbound
//! listener when `inbound.protocol` is `tcp`.
//!
//! Each listener runs one accept loop. A connection over the cap (the target's
//! `max_connections`) is closed at accept and counted. Otherwise its task loads the
//! target from the state current at accept, and:
//!
//! 1. on the inbound listener, terminates mutual TLS per the state's mode, as the HTTP
//!    inbound does, but with ALPN `remora-tcp` only (an HTTP caller's handshake fails),
//!    then checks the caller's SPIFFE ID against `inbound.allow` (a TCP listener has no
//!    routes: the allow list is per listener);
//! 2. connects to an endpoint (`TcpForward`: the balancer's pick, another endpoint on a
//!    failed connect);
//! 3. splices the two until both close, either breaks, or both are quiet for the idle
//!    timeout.
//!
//! On shutdown the loop stops accepting, lets open connections go on until they end or
//! `drain_timeout` passes, and then closes the rest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::build::metrics::{DeniedLabels, ListenerLabels};
use crate::build::state::State;
use crate::build::tcp::TcpTarget;
use crate::core::clock;
use crate::serve::listener::first_bytes;
use crate::serve::shared::Shared;
use crate::tls::{Detected, InboundTls};
use crate::upstream::{splice, SpliceEnd, TcpConnectError};

/// A bound TCP passthrough listener waiting to be served.
pub struct TcpProxyListener {
    /// The metrics label: `inbound` or `service:<name>`.
    pub label: String,
    /// Whose connections it takes.
    pub entry: TcpEntry,
    /// The bound socket.
    pub tcp: TcpListener,
}

/// Whose connections a TCP listener takes.
#[derive(Debug, Clone)]
pub enum TcpEntry {
    /// A `protocol: tcp` service's own port.
    Service(Arc<str>),
    /// The inbound listener in TCP mode: to the local app.
    Inbound,
}

impl TcpEntry {
    /// Its target in `state`; `None` when a reload made it something else.
    fn target<'s>(&self, state: &'s State) -> Option<&'s Arc<TcpTarget>> {
        match self {
            Self::Service(name) => state.tcp.service(name),
            Self::Inbound => state.tcp.inbound(),
        }
    }
}

/// The listener's own series.
struct ListenerSeries {
    label: String,
    open: Gauge,
    rejected: Counter,
    handshake_failures: Counter,
}

/// Serves `listener` until `shutdown` turns true, then drains its connections.
pub async fn serve(
    listener: TcpProxyListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let labels = ListenerLabels {
        listener: listener.label.clone(),
    };
    let metrics = &shared.metrics;
    let series = Arc::new(ListenerSeries {
        label: listener.label.clone(),
        open: metrics.connections.get_or_create(&labels).clone(),
        rejected: metrics.connections_rejected.get_or_create(&labels).clone(),
        handshake_failures: metrics
            .tls_handshake_failures
            .get_or_create(&labels)
            .clone(),
    });
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.tcp.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %series.label, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = shared.state.load_full();
        let Some(target) = listener.entry.target(&state).cloned() else {
            tracing::warn!(listener = %series.label, "no longer a TCP listener in the current config: restart remora to apply the change");
            continue;
        };
        let limit = target.forward.config().max_connections();
        if usize::try_from(series.open.get()).unwrap_or(usize::MAX) >= limit {
            series.rejected.inc();
            tracing::debug!(listener = %series.label, %peer, limit, "connection refused: at max_connections");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            shared: shared.clone(),
            inbound: matches!(listener.entry, TcpEntry::Inbound),
            peer,
            state,
            target,
            listener: series.clone(),
        };
        let open = OpenGuard::new(&series.open);
        // Its every poll reads the clock at most once (`core::clock`).
        connections.spawn(clock::scoped(async move {
            let _open = open;
            connection.run(stream).await;
        }));
    }
    drop(listener.tcp);
    drain(&series.label, connections, &shared).await;
}

/// Waits up to `drain_timeout` for `connections` to end by themselves, then closes the
/// rest.
async fn drain(label: &str, mut connections: JoinSet<()>, shared: &Shared) {
    let drain_timeout = shared.state.load().config.drain_timeout;
    let ended = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(drain_timeout, ended).await.is_ok() {
        tracing::info!(listener = %label, "drained");
        return;
    }
    tracing::warn!(
        listener = %label,
        open = connections.len(),
        ?drain_timeout,
        "drain timeout: closing the connections still open",
    );
    connections.shutdown().await;
}

/// Counts one in a gauge while it lives (a connection's task may be aborted at drain).
struct OpenGuard(Gauge);

impl OpenGuard {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How an accepted connection opens.
enum Opening {
    /// Forwarded as it is.
    Plaintext,
    /// A mutual TLS handshake first; anything else is refused.
    Handshake(TlsAcceptor),
    /// Closed or silent before its first bytes (permissive mode): nothing to forward.
    Silent,
}

/// One accepted connection, until its task forwards it.
struct Connection {
    shared: Arc<Shared>,
    /// Whether it came in on the inbound listener (TLS and authorization apply).
    inbound: bool,
    peer: SocketAddr,
    /// The state at accept: its TLS mode, allow list and handshake timeout serve the
    /// connection for its whole life.
    state: Arc<State>,
    target: Arc<TcpTarget>,
    listener: Arc<ListenerSeries>,
}

impl Connection {
    /// Terminates TLS when the listener and mode say so, then forwards.
    async fn run(self, tcp: TcpStream) {
        let acceptor = match self.opening(&tcp).await {
            Opening::Plaintext => return self.authorized(tcp, None).await,
            Opening::Silent => return,
            Opening::Handshake(acceptor) => acceptor,
        };
        let deadline = Instant::now() + self.state.config.limits.header_read_timeout;
        let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => return self.refused(&error),
            Err(_) => return self.refused(&"handshake timed out"),
        };
        let (_, session) = tls.get_ref();
        if session.alpn_protocol() != Some(crate::tls::TCP_ALPN) {
            return self.refused(&"the client did not offer ALPN remora-tcp");
        }
        let identity = crate::tls::peer_identity(session).map(|id| id.to_string());
        self.authorized(tls, identity).await;
    }

    /// How the connection opens: per the listener, the state's mode and (permissive
    /// mode) its first bytes.
    async fn opening(&self, tcp: &TcpStream) -> Opening {
        let config = match &self.state.tcp.inbound_tls {
            Some(config) if self.inbound => config,
            _ => return Opening::Plaintext,
        };
        let acceptor = TlsAcceptor::from(config.clone());
        match self.state.inbound_tls {
            InboundTls::Off => Opening::Plaintext,
            InboundTls::Strict => Opening::Handshake(acceptor),
            InboundTls::Permissive => {
                // NOTE: waits for the client's first bytes, so a protocol whose server
                // speaks first cannot be served in permissive mode (strict or off can).
                let deadline = Instant::now() + self.state.config.limits.header_read_timeout;
                match first_bytes(tcp, deadline).await {
                    Some(Detected::Tls) => Opening::Handshake(acceptor),
                    Some(_) => Opening::Plaintext,
                    None => Opening::Silent,
                }
            }
        }
    }

    fn refused(&self, error: &dyn std::fmt::Display) {
        self.listener.handshake_failures.inc();
        tracing::debug!(listener = %self.listener.label, peer = %self.peer, %error, "TLS handshake refused");
    }

    /// Checks the caller against the allow list (inbound only), then forwards.
    async fn authorized<C>(self, client: C, identity: Option<String>)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let allowed = match (&self.state.authorization, self.inbound) {
            (Some(authorization), true) => authorization.admits_connection(identity.as_deref()),
            _ => true,
        };
        if allowed {
            return self.forward(client).await;
        }
        let caller = identity.as_deref().unwrap_or("unauthenticated");
        self.target.series.denied.inc();
        let labels = DeniedLabels {
            listener: "inbound",
            caller: caller.to_string(),
        };
        self.shared
            .metrics
            .requests_denied
            .get_or_create(&labels)
            .inc();
        tracing::info!(peer = %self.peer, caller, "TCP connection refused: the caller is not in inbound.allow");
    }

    /// Connects to an endpoint and splices the two until the connection ends.
    async fn forward<C>(self, client: C)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let target = &self.target;
        let connected = match target.forward.connect().await {
            Ok(connected) => connected,
            Err(error) => {
                let counter = match error {
                    TcpConnectError::NoEndpoint(_) => &target.series.no_endpoint,
                    TcpConnectError::Connect { .. } => &target.series.connect_failed,
                };
                counter.inc();
                tracing::warn!(service = %target.service, peer = %self.peer, %error, "TCP connection not forwarded");
                return;
            }
        };
        let endpoint = connected.open.endpoint().addr;
        target.series.opened.inc();
        let _active = OpenGuard::new(&target.series.active);
        let idle_timeout = target.forward.config().idle_timeout();
        let spliced = splice(client, connected.stream, idle_timeout, &target.series.bytes).await;
        let (received, sent) = (spliced.received, spliced.sent);
        let peer = self.peer;
        match spliced.end {
            SpliceEnd::Closed => {
                tracing::debug!(service = %target.service, %peer, %endpoint, received, sent, "TCP connection closed");
            }
            SpliceEnd::Idle => {
                tracing::debug!(service = %target.service, %peer, %endpoint, received, sent, ?idle_timeout, "TCP connection closed: idle");
            }
            SpliceEnd::Broken(error) => {
                tracing::debug!(service = %target.service, %peer, %endpoint, received, sent, %error, "TCP connection broken");
            }
        }
    }
}
