//! Whether a shared limit may ask Redis now: after a failure, no call asks again for
//! [`BACKOFF`] (each answers from the fallback at once), then one call probes while the
//! others keep using the fallback; a success ends the outage.
//!
//! Logs are rate-limited: at most one line per [`LOG_EVERY`] for going degraded, and
//! one for recovering, each counting the failures since the previous line. The metrics
//! say the rest.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::metrics::SharedLimitMetrics;
use super::config::OnError;

/// How long after a failure no call asks Redis.
pub(super) const BACKOFF: Duration = Duration::from_millis(500);

/// The least time between two log lines of the same kind.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a Redis call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// No answer within the deadline.
    Timeout,
    /// An error answer, or no connection.
    Redis,
}

/// One shared limit's view of its Redis.
pub(super) struct Outage {
    start: Instant,
    /// Nanoseconds after `start` before which no call asks Redis; 0 while healthy. The
    /// CAS that moves it elects the one call that probes.
    retry_at: AtomicU64,
    degraded: AtomicBool,
    /// Failures since the last log line.
    unlogged: AtomicU64,
    /// Nanoseconds after `start` (plus one, so that 0 means never) of the last line.
    last_degraded_log: AtomicU64,
    last_recovered_log: AtomicU64,
    metrics: SharedLimitMetrics,
    service: Arc<str>,
    limit: Arc<str>,
    peer: String,
    on_error: OnError,
}

impl Outage {
    pub(super) fn new(
        metrics: SharedLimitMetrics,
        service: Arc<str>,
        limit: Arc<str>,
        peer: String,
        on_error: OnError,
    ) -> Self {
        Self {
            start: Instant::now(),
            retry_at: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            unlogged: AtomicU64::new(0),
            last_degraded_log: AtomicU64::new(0),
            last_recovered_log: AtomicU64::new(0),
            metrics,
            service,
            limit,
            peer,
            on_error,
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }

    /// Whether this call may ask Redis: always while healthy; during an outage, only
    /// the first call after each backoff.
    pub(super) fn may_ask(&self) -> bool {
        let retry_at = self.retry_at.load(Ordering::Relaxed);
        if retry_at == 0 {
            return true;
        }
        let now = self.now();
        now >= retry_at
            && self
                .retry_at
                .compare_exchange(
                    retry_at,
                    now + BACKOFF.as_nanos() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// How long until Redis is asked again (what a refusal without Redis says).
    pub(super) fn retry_in(&self) -> Duration {
        let retry_at = self.retry_at.load(Ordering::Relaxed);
        Duration::from_nanos(retry_at.saturating_sub(self.now())).max(Duration::from_millis(1))
    }

    /// A Redis call about the bucket `key` failed: back off, and say so.
    pub(super) fn failed(&self, failure: Failure, key: &str, error: &dyn std::fmt::Display) {
        match failure {
            Failure::Timeout => self.metrics.timeouts.inc(),
            Failure::Redis => self.metrics.errors.inc(),
        };
        let now = self.now();
        self.retry_at
            .store(now + BACKOFF.as_nanos() as u64, Ordering::Relaxed);
        let failures = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.degraded.swap(true, Ordering::Relaxed) {
            self.metrics.degraded.set(1);
        }
        if self.log_due(&self.last_degraded_log, now) {
            self.unlogged.store(0, Ordering::Relaxed);
            tracing::warn!(
                service = %self.service,
                limit = %self.limit,
                redis = %self.peer,
                key,
                on_error = self.on_error.as_str(),
                failures,
                %error,
                "shared rate limit: Redis failed, deciding by on_error until it answers"
            );
        }
    }

    /// A Redis call answered: the outage, if any, is over.
    pub(super) fn answered(&self) {
        if !self.degraded.load(Ordering::Relaxed) || !self.degraded.swap(false, Ordering::Relaxed) {
            return;
        }
        self.retry_at.store(0, Ordering::Relaxed);
        self.metrics.degraded.set(0);
        if self.log_due(&self.last_recovered_log, self.now()) {
            tracing::info!(
                service = %self.service,
                limit = %self.limit,
                redis = %self.peer,
                "shared rate limit: Redis answers again"
            );
        }
    }

    /// Whether a line of the kind last written at `last` may be written at `now`.
    fn log_due(&self, last: &AtomicU64, now: u64) -> bool {
        let previous = last.load(Ordering::Relaxed);
        (previous == 0 || now.saturating_sub(previous) >= LOG_EVERY.as_nanos() as u64)
            && last
                .compare_exchange(previous, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry as MetricsRegistry;

    use super::*;
    use crate::policy::rate_limit::RateLimitMetrics;

    fn outage() -> (Outage, SharedLimitMetrics) {
        let metrics = RateLimitMetrics::register(&mut MetricsRegistry::default());
        let shared = metrics.shared(&"svc".into(), "api");
        let outage = Outage::new(
            shared.clone(),
            "svc".into(),
            "api".into(),
            "127.0.0.1:6379".into(),
            OnError::Local,
        );
        (outage, shared)
    }

    #[test]
    fn a_failure_stops_asking_until_an_answer() {
        let (outage, metrics) = outage();
        assert!(outage.may_ask());
        outage.failed(Failure::Timeout, "remora:rate_limit:svc:api:all", &"late");
        assert!(!outage.may_ask(), "no call asks during the backoff");
        assert_eq!(metrics.degraded.get(), 1);
        assert_eq!(metrics.timeouts.get(), 1);
        assert!(outage.retry_in() <= BACKOFF);
        outage.answered();
        assert!(outage.may_ask());
        assert_eq!(metrics.degraded.get(), 0);
    }

    #[test]
    fn after_the_backoff_one_call_probes() {
        let (outage, metrics) = outage();
        outage.failed(Failure::Redis, "remora:rate_limit:svc:api:all", &"refused");
        // As if the backoff had passed.
        outage.retry_at.store(1, Ordering::Relaxed);
        assert!(outage.may_ask(), "the first call after the backoff probes");
        assert!(!outage.may_ask(), "the others keep the fallback meanwhile");
        assert_eq!(metrics.errors.get(), 1);
    }
}
