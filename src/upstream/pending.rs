//! The calls of one endpoint that wait for a connection: a bounded queue with a time
//! limit, and the pools' metrics (the queue's, and failed connects by reason).
//!
//! A call that finds no idle connection and no connect slot free (see
//! `PoolConfig::max_connecting_per_endpoint`) takes a place here and waits, at most
//! `pending_timeout`, for a connection another call releases or for a connect slot. A
//! full queue refuses the call at once. Only calls that wait pass here: a call served by
//! an idle connection never touches the queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;

use super::pool::ConnectError;
use crate::core::labels::{register_per_service, ByService, PerService, ServiceLabel};

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

/// Labels of failed connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectErrorLabels {
    service: ServiceLabel,
    /// [`ConnectError::reason`]: `refused`, `timeout`, `tls` or `other`.
    reason: &'static str,
}

/// The pools' metrics, shared by every pool of the process.
#[derive(Debug, Clone, Default)]
pub struct PoolMetrics {
    /// `remora_upstream_pending`: calls waiting for a connection now.
    waiting: Gauge,
    /// `remora_upstream_pending_overflow_total{service}`: calls refused by a full queue.
    overflow: PerService<Counter>,
    /// `remora_upstream_pending_timeouts_total{service}`: calls that waited too long.
    timeouts: PerService<Counter>,
    /// `remora_upstream_connect_errors_total{service,reason}`: connections that could not
    /// be made.
    connect_errors: Family<ConnectErrorLabels, Counter>,
}

impl PoolMetrics {
    /// Registers the pending-queue gauge and counters, and the failed connects.
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
        let connect_errors = Family::default();
        registry.register(
            "upstream_connect_errors",
            "Upstream connections that could not be made, by service and reason (refused, timeout, tls, other)",
            connect_errors.clone(),
        );
        Self {
            waiting,
            overflow,
            timeouts,
            connect_errors,
        }
    }

    /// Counts a call of `service` that got no connection: refused by the queue or timed
    /// out in it, or its connect failed (one call makes at most one attempt, so this
    /// counts the attempts).
    pub(super) fn record(&self, service: &Arc<str>, error: &ConnectError) {
        let family = match error {
            ConnectError::QueueFull(_) => &self.overflow,
            ConnectError::QueueTimeout(_) => &self.timeouts,
            failed => {
                let labels = ConnectErrorLabels {
                    service: ServiceLabel(service.clone()),
                    reason: failed.reason().unwrap_or("other"),
                };
                self.connect_errors.get_or_create(&labels).inc();
                return;
            }
        };
        family.get_or_create(&ByService::of(service)).inc();
    }
}
