//! Accept loops: HTTP/1.1 and HTTP/2 (prior knowledge) on one port, mutual TLS on the
//! inbound listener, connection caps, slow-client protection and graceful drain.
//!
//! Each listener runs one accept loop. A connection is served by hyper's auto builder,
//! which tells HTTP/2 from HTTP/1 by the connection preface. On shutdown the loop stops
//! accepting, asks every connection to finish (HTTP/1: close after the current response;
//! HTTP/2: GOAWAY) and waits up to `drain_timeout` for them.
//! An HTTP/2 connection's streams run in the connection's own task
//! ([`ConnectionTask`]), not in a task each; the drain waits for them too.
//!
//! The inbound listener terminates mutual TLS per the state's mode (`State::inbound_tls`):
//! `Strict` handshakes every connection, `Permissive` peeks at the first bytes and
//! handshakes a ClientHello (plaintext is served as it is), `Off` serves plaintext. The
//! handshake runs in the connection's task, bounded by `limits.header_read_timeout`; a
//! failed one is logged at debug and counted, and never reaches the app. The caller's
//! SPIFFE ID is read from its certificate once per connection and handed to the proxy
//! service. A TLS caller that negotiated ALPN `h2` must then open with the HTTP/2
//! preface, or gets GOAWAY(PROTOCOL_ERROR) (`preface::admit_h2`), as a plaintext caller
//! whose preface goes wrong does. Outbound listeners are always plaintext: the local app talks to its own
//! sidecar over loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::build::metrics::ListenerLabels;
use crate::build::state::State;
use crate::core::clock;
use crate::core::executor::ConnectionTask;
use crate::core::http1::{ServerConnection, ServerLimits, SplitIo};
use crate::serve::drain::{Drain, Watcher};
use crate::serve::proxy::{Entry, ProxyService};
use crate::serve::shared::Shared;
use crate::tls::{detect, Detected, InboundTls, DETECT_LEN};

/// A bound proxy listener waiting to be served.
pub struct ProxyListener {
    /// The metrics label: `inbound`, `outbound` or `service:<name>`.
    pub label: String,
    /// What routes its requests.
    pub entry: Entry,
    /// The bound socket.
    pub tcp: TcpListener,
}

/// Serves `listener` until `shutdown` turns true, then drains its connections.
pub async fn serve(
    listener: ProxyListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let labels = ListenerLabels {
        listener: listener.label.clone(),
    };
    let open = shared.metrics.connections.get_or_create(&labels).clone();
    let rejected = shared
        .metrics
        .connections_rejected
        .get_or_create(&labels)
        .clone();
    let handshake_failures = shared
        .metrics
        .tls_handshake_failures
        .get_or_create(&labels)
        .clone();
    let graceful = Drain::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.tcp.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %listener.label, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = shared.state.load_full();
        let limit = state.config.limits.max_connections;
        if usize::try_from(open.get()).unwrap_or(usize::MAX) >= limit {
            rejected.inc();
            tracing::debug!(listener = %listener.label, %peer, limit, "connection refused: at max_connections");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            shared: shared.clone(),
            entry: listener.entry.clone(),
            peer,
            tls: Termination::of(&listener.entry, &state),
            state,
            watcher: graceful.watcher(),
            streams_watcher: graceful.watcher(),
            handshake_failures: handshake_failures.clone(),
        };
        let open = open.clone();
        open.inc();
        // Its every poll reads the clock at most once (`core::clock`).
        tokio::spawn(clock::scoped(async move {
            connection.run(stream).await;
            open.dec();
        }));
    }
    drop(listener.tcp);
    let drain_timeout = shared.state.load().config.drain_timeout;
    tokio::select! {
        _ = graceful.shutdown() => {
            tracing::info!(listener = %listener.label, "drained");
        }
        _ = tokio::time::sleep(drain_timeout) => {
            tracing::warn!(
                listener = %listener.label,
                open = open.get(),
                ?drain_timeout,
                "drain timeout: closing the connections still open",
            );
        }
    }
}

/// How a connection's first bytes are treated, per the listener and the state's mode.
enum Termination {
    /// Served as plaintext.
    Plaintext,
    /// A mutual TLS handshake first; anything else is refused.
    Tls(TlsAcceptor),
    /// A ClientHello is handshaken, anything else served as plaintext.
    Detect(TlsAcceptor),
}

impl Termination {
    fn of(entry: &Entry, state: &State) -> Self {
        let (Entry::Inbound, Some(mesh)) = (entry, &state.mesh) else {
            return Self::Plaintext;
        };
        let acceptor = || TlsAcceptor::from(mesh.server_config.clone());
        match state.inbound_tls {
            InboundTls::Strict => Self::Tls(acceptor()),
            InboundTls::Permissive => Self::Detect(acceptor()),
            InboundTls::Off => Self::Plaintext,
        }
    }
}

/// A request head may always take this many bytes, whatever `limits.max_header_bytes`
/// says (as hyper's smallest buffer did).
const MIN_HEAD_LIMIT: usize = 8192;

/// One accepted connection, until its task serves it.
struct Connection {
    shared: Arc<Shared>,
    entry: Entry,
    peer: SocketAddr,
    tls: Termination,
    /// The state at accept: its server settings and handshake timeout serve the
    /// connection (requests load the current state each).
    state: Arc<State>,
    /// Held from accept, so a drain waits for handshakes in progress too.
    watcher: Watcher,
    /// Held until the connection's HTTP/2 streams have ended too: `watcher` ends with
    /// the connection future, which ends before the streams its task still runs.
    streams_watcher: Watcher,
    handshake_failures: Counter,
}

impl Connection {
    /// Handshakes when the mode says so, then serves HTTP until the connection ends.
    async fn run(self, mut tcp: TcpStream) {
        // One bound for the first bytes and the handshake together.
        let deadline = Instant::now() + self.state.config.limits.header_read_timeout;
        let acceptor = match &self.tls {
            Termination::Plaintext => None,
            Termination::Tls(acceptor) => Some(acceptor.clone()),
            Termination::Detect(acceptor) => match first_bytes(&tcp, deadline).await {
                Some(Detected::Tls) => Some(acceptor.clone()),
                Some(_) => None,
                None => {
                    tracing::debug!(peer = %self.peer, "connection closed or silent before its first bytes");
                    return;
                }
            },
        };
        let Some(acceptor) = acceptor else {
            let Some(http2) = super::preface::admit(&mut tcp, deadline).await else {
                tracing::debug!(peer = %self.peer, "closed, silent, or a bad HTTP/2 preface (GOAWAY sent)");
                return;
            };
            // Boxed, as the handshake and the TLS connection below: the task then holds
            // only the state its own connection needs for as long as it lives, not the
            // largest of the three (a plaintext connection would carry room for TLS).
            if http2 {
                return Box::pin(self.serve(tcp, None, true)).await;
            }
            return Box::pin(self.serve_http1(tcp, None)).await;
        };
        let handshake = tokio::time::timeout_at(deadline, Box::pin(acceptor.accept(tcp))).await;
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => return self.refused(&error),
            Err(_) => return self.refused(&"handshake timed out"),
        };
        // Once per connection: every call on it shares the one string.
        let identity = crate::tls::peer_identity(tls.get_ref().1)
            .map(|identity| Arc::<str>::from(identity.to_string()));
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let Some(tls) = Box::pin(super::preface::admit_h2(tls, deadline)).await else {
                tracing::debug!(peer = %self.peer, "ALPN h2, then closed, silent, or no HTTP/2 preface (GOAWAY sent)");
                return;
            };
            return Box::pin(self.serve(tls, identity, true)).await;
        }
        if tls.get_ref().1.alpn_protocol() == Some(b"http/1.1") {
            return Box::pin(self.serve_http1(tls, identity)).await;
        }
        // Without ALPN the caller may still speak HTTP/2: hyper tells by the preface.
        Box::pin(self.serve(tls, identity, false)).await;
    }

    fn refused(&self, error: &dyn std::fmt::Display) {
        self.handshake_failures.inc();
        tracing::debug!(peer = %self.peer, %error, "TLS handshake failed");
    }

    /// Serves HTTP/1.1 over `io`, plaintext or TLS alike, with remora's own server
    /// (`core::http1`).
    async fn serve_http1<I: SplitIo>(self, io: I, identity: Option<Arc<str>>) {
        let Self {
            shared,
            entry,
            peer,
            state,
            watcher,
            streams_watcher,
            ..
        } = self;
        let limits = ServerLimits {
            header_read_timeout: state.config.limits.header_read_timeout,
            max_head_bytes: state.config.limits.max_header_bytes.max(MIN_HEAD_LIMIT),
            half_close: false,
        };
        drop(state);
        let service = ProxyService::new(shared, entry, peer, identity);
        let connection = watcher.watch(ServerConnection::new(io, service, limits));
        if let Err(error) = connection.await {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
        drop(streams_watcher);
    }

    /// Serves HTTP/1.1 and HTTP/2 (with upgrades) over `io` through hyper, plaintext or
    /// TLS alike (HTTP/2, and TLS without ALPN, which may be either);
    /// `http2`: the caller opened with the HTTP/2 preface.
    async fn serve<I>(self, io: I, identity: Option<Arc<str>>, http2: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            shared,
            entry,
            peer,
            state,
            watcher,
            streams_watcher,
            ..
        } = self;
        let service = ProxyService::new(shared, entry, peer, identity);
        let connection = state
            .server
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        drop(state);
        let connection = watcher.watch(connection);
        // HTTP/2: its streams run in this task (`core::executor`), and the drain waits for
        // them through `streams_watcher`. HTTP/1 spawns nothing and skips the wrapper's
        // cost; an HTTP/2 connection not known as such here (TLS without ALPN) has its
        // streams spawned on tokio, as the executor does outside a `ConnectionTask`.
        let ended = if http2 {
            ConnectionTask::new(connection).await
        } else {
            connection.await
        };
        if let Err(error) = ended {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
        drop(streams_watcher);
    }
}

/// What the first bytes of `tcp` are, without reading them; `None` when the peer
/// closed or sent too little by `deadline`.
pub(crate) async fn first_bytes(tcp: &TcpStream, deadline: Instant) -> Option<Detected> {
    // A ClientHello split before its sixth byte is rare: then more is waited for.
    let classify = |first: &[u8]| Some(detect(first)).filter(|d| *d != Detected::NeedMore);
    super::preface::peek_until::<_, DETECT_LEN>(tcp, deadline, classify).await
}
