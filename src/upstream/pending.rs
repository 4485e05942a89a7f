//! The calls of one endpoint that wait for a connection: a bounded queue with a time
//! limit, and its metrics.
//!
//! A call that finds no idle connection and no connect slot free (see
//! `PoolConfig::max_connecting_per_endpoint`) takes a place here and waits, at most
//! `pending_timeout`, for a connection another call releases or for a connect slot. A
//! full queue refuses the call at once. Only calls that wait pass here: a call served by
//! an idle connection never touches the queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;

use super::pool::ConnectError;
use crate::core::labels::{register_per_service, ByService, PerService};

/// One endpoint's waiting calls (of one protocol).
#[derive(Debug)]
pub(super) struct PendingQueue {
    /// Calls waiting now; never above `max` but for an instant in [`Self::enter`].
    waiting: AtomicUsize,
    max: usize,
    timeout: Duration,
    /// Calls waiting in every queue of the process.
    gauge: Gauge,
}

/// A place in a [`PendingQueue`], given back when dropped (the call got its connection,
/// timed out, or was cancelled).
#[derive(Debug)]
pub(super) struct Waiting<'a> {
    queue: &'a PendingQueue,
}

impl PendingQueue {
    /// A queue of at most `max` calls, each waiting at most `timeout`.
    pub(super) fn new(max: usize, timeout: Duration, metrics: &PoolMetrics) -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            max,
            timeout,
            gauge: metrics.waiting.clone(),
        }
    }

    /// A place in the queue, or the error refusing the call when the queue is full.
    pub(super) fn enter(&self) -> Result<Waiting<'_>, ConnectError> {
        // SeqCst: a releasing call reads `waiting` after its check-in to decide whether
        // to wake a waiter, and a waiter looks for idle connections after this.
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ConnectError::QueueFull(self.max));
        }
        self.gauge.inc();
        Ok(Waiting { queue: self })
    }

    /// Whether a call waits now.
    pub(super) fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// How long a call may wait.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::SeqCst);
        self.queue.gauge.dec();
    }
}

/// The pools' queue metrics, shared by every pool of the process.
#[derive(Debug, Clone, Default)]
pub struct PoolMetrics {
    /// `remora_upstream_pending`: calls waiting for a connection now.
    waiting: Gauge,
    /// `remora_upstream_pending_overflow_total{service}`: calls refused by a full queue.
    overflow: PerService<Counter>,
    /// `remora_upstream_pending_timeouts_total{service}`: calls that waited too long.
    timeouts: PerService<Counter>,
}

impl PoolMetrics {
    /// Registers the pending-queue gauge and counters.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let waiting = Gauge::default();
        registry.register(
            "upstream_pending",
            "Calls waiting for an upstream connection (no idle one, every connect slot taken)",
            waiting.clone(),
        );
        let overflow = register_per_service(
            registry,
            "upstream_pending_overflow",
            "Calls refused at once because their endpoint's pending queue was full",
        );
        let timeouts = register_per_service(
            registry,
            "upstream_pending_timeouts",
            "Calls that waited longer than upstream.pending_timeout for a connection",
        );
        Self {
            waiting,
            overflow,
            timeouts,
        }
    }

    /// Counts a call of `service` that failed in the queue with `error` (other errors
    /// are not counted here).
    pub(super) fn record(&self, service: &Arc<str>, error: &ConnectError) {
        let family = match error {
            ConnectError::QueueFull(_) => &self.overflow,
            ConnectError::QueueTimeout(_) => &self.timeouts,
            _ => return,
        };
        family.get_or_create(&ByService::of(service)).inc();
    }
}
