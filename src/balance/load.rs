//! What one attempt puts on its endpoint: a unit of in-flight load while it waits for
//! response headers, and an RTT sample when it ends. A TCP passthrough connection puts
//! a unit of load on its endpoint for as long as it stays open ([`OpenConnection`]), so
//! least-request and P2C balance TCP over open connections.
//!
//! [`Forward`](crate::upstream::Forward) takes an [`InFlight`] from
//! [`EndpointSet::start`](super::EndpointSet::start) right before sending. The sample is
//! recorded here rather than by an [`EndpointObserver`](crate::upstream::EndpointObserver):
//! the estimate lives on the endpoint, so no dynamic call or lookup is needed, and the
//! guard also covers attempts that never end (dropped by a timeout or a caller that went
//! away), which observers are not told of.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use super::ewma::EwmaParams;
use super::Endpoint;
use crate::core::clock;

/// One attempt in flight on an endpoint; dropping it ends the attempt.
///
/// Invariant: while it lives, the endpoint's `in_flight` counts it exactly once.
#[derive(Debug)]
#[must_use = "the attempt ends when this is dropped"]
pub struct InFlight<'e> {
    endpoint: &'e Endpoint,
    params: EwmaParams,
    started: Instant,
    /// Whether the outcome was recorded by [`finish`](Self::finish).
    finished: bool,
}

impl<'e> InFlight<'e> {
    pub(crate) fn new(endpoint: &'e Endpoint, params: EwmaParams) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            endpoint,
            params,
            started: clock::now(),
            finished: false,
        }
    }

    /// The attempt got response headers (`answered`) or failed to (connect error,
    /// reset). A failure counts as a slow answer so a black hole does not attract load.
    /// Returns how long the attempt took.
    pub fn finish(mut self, answered: bool) -> std::time::Duration {
        // The clock itself at the answer: an upstream that answered within the poll
        // that sent the request would otherwise sample 0 (and the log's upstream time).
        let elapsed = self.started.elapsed();
        if answered {
            self.endpoint.rtt.record(elapsed, self.params);
        } else {
            self.endpoint.rtt.record_failure(elapsed, self.params);
        }
        self.finished = true;
        elapsed
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.finished {
            // Abandoned (timed out, cancelled): it took at least this long.
            self.endpoint
                .rtt
                .record(self.started.elapsed(), self.params);
        }
    }
}

/// A connection open on an endpoint (TCP passthrough), counted in its `in_flight` until
/// dropped; the endpoint stays alive with it, whatever discovery does meanwhile.
///
/// Invariant: while it lives, the endpoint's `in_flight` counts it exactly once.
#[derive(Debug)]
#[must_use = "the connection stops counting when this is dropped"]
pub struct OpenConnection {
    endpoint: Arc<Endpoint>,
}

impl OpenConnection {
    /// Counts a connection open on `endpoint`.
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self { endpoint }
    }

    /// The endpoint it is open on.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
