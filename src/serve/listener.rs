//! Accept loops: HTTP/1.1 and HTTP/2 (prior knowledge) on one port, connection caps,
//! slow-client protection and graceful drain.
//!
//! Each listener runs one accept loop. A connection is served by hyper's auto builder,
//! which tells HTTP/2 from HTTP/1 by the connection preface. On shutdown the loop stops
//! accepting, asks every connection to finish (HTTP/1: close after the current response;
//! HTTP/2: GOAWAY) and waits up to `drain_timeout` for them.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::build::metrics::ListenerLabels;
use crate::serve::proxy::{Entry, ProxyService};
use crate::serve::shared::Shared;

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
    let graceful = GracefulShutdown::new();
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
        let state = shared.state.load();
        let limit = state.config.limits.max_connections;
        if usize::try_from(open.get()).unwrap_or(usize::MAX) >= limit {
            rejected.inc();
            tracing::debug!(listener = %listener.label, %peer, limit, "connection refused: at max_connections");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let service = ProxyService::new(shared.clone(), listener.entry.clone(), peer);
        let connection = state
            .server
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let open = open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            open.dec();
        });
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
