//! The retry layer, and what every clone of it and of its services shares.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tower::Layer;

use super::config::RetryConfig;
use super::metrics::{RetryCounters, RetryMetrics};
use super::service::Retry;
use crate::policy::timeout::TimeoutMetrics;

/// Retries a service's failed attempts.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

/// What every clone of the layer and its services share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: RetryConfig,
    pub(super) service: Arc<str>,
    /// This service's counters, looked up once.
    pub(super) counters: RetryCounters,
    /// Counts per-try timeouts when set.
    pub(super) timeout_metrics: Option<TimeoutMetrics>,
    /// Whether the budget last refused a retry (to log transitions once).
    pub(super) exhausted: AtomicBool,
}

impl RetryLayer {
    /// A layer retrying `service`'s calls per `config`.
    pub fn new(config: RetryConfig, service: Arc<str>, metrics: RetryMetrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                counters: metrics.of(&service),
                config,
                service,
                timeout_metrics: None,
                exhausted: AtomicBool::new(false),
            }),
        }
    }

    /// Counts per-try timeouts as `remora_timeouts_total{kind="per_try"}`.
    pub fn with_timeout_metrics(mut self, metrics: TimeoutMetrics) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.timeout_metrics = Some(metrics),
            None => tracing::warn!("retry layer already shared; per-try timeouts are not counted"),
        }
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::new(inner, self.shared.clone())
    }
}
