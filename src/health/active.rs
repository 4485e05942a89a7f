//! Active health checks: a task per service probes every endpoint on an interval and
//! holds failing ones out of balancing.
//!
//! [`HealthChecker::spawn`] starts the task; the [`HealthCheckHandle`] it returns stops it
//! when dropped. Each round, the task takes the current snapshot of the service's
//! [`EndpointSet`], probes its endpoints concurrently (at most
//! [`MAX_CONCURRENT_PROBES`] at a time, each bounded by the config's `timeout`), and
//! counts each result as it arrives (see `tracker.rs` for the thresholds and how new and
//! vanished endpoints are treated). The task is the only writer of
//! `readiness.unhealthy`: it stores the endpoint's health after every probe result, so
//! the flag never drifts from what the checker believes for longer than one round.
//!
//! Rounds do not overlap: the next round starts `interval` after the previous one
//! started, or as soon as it ended if it took longer (a slow endpoint delays the round
//! by at most `timeout`). With `jitter`, each wait is drawn from
//! `[interval × (1 − jitter), interval]`, so that many sidecars started together do not
//! probe together. The first round runs at once.
//!
//! When the handle is dropped the task stops probing, clears `readiness.unhealthy` on
//! the endpoints it tracks (a stopped checker holds nothing out) and removes its gauges.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::probe::{PreparedProbe, Probe, ProbeError};
use super::tracker::{Health, HealthTracker};
use super::HealthMetrics;
use crate::balance::{Endpoint, EndpointSet};
use crate::upstream::EndpointTls;

/// Probes in flight at once per service: bounds the sockets a large service's round opens.
pub const MAX_CONCURRENT_PROBES: usize = 32;
/// Failed probes in a row that make an endpoint unhealthy, unless configured.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Passed probes in a row that make an unhealthy endpoint healthy, unless configured.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// The time between rounds of probes, unless configured.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The time one probe may take, unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest interval or timeout accepted: longer is a typo, not a policy.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// How a service's endpoints are probed. Valid by construction
/// ([`HealthCheckConfig::try_new`]).
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    /// What each probe asks, as configured.
    probe: Probe,
    /// The same probe, parsed.
    prepared: PreparedProbe,
    /// Time from one round's start to the next (non-zero).
    interval: Duration,
    /// The longest one probe may take, connecting included (non-zero).
    timeout: Duration,
    /// At least 1.
    unhealthy_threshold: u32,
    /// At least 1.
    healthy_threshold: u32,
    /// In [0, 1]: the fraction of `interval` a wait may be shortened by at random.
    jitter: f64,
}

/// What is wrong with a health check configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthCheckConfigError {
    /// A zero interval.
    #[error("health check interval must be non-zero")]
    ZeroInterval,
    /// A zero timeout.
    #[error("health check timeout must be non-zero")]
    ZeroTimeout,
    /// An interval or timeout beyond a day.
    #[error("health check {what} must be at most {MAX_DURATION:?}, got {value:?}")]
    TooLong {
        /// `interval` or `timeout`.
        what: &'static str,
        /// The value given.
        value: Duration,
    },
    /// `unhealthy_threshold: 0`.
    #[error("unhealthy_threshold must be at least 1")]
    ZeroUnhealthyThreshold,
    /// `healthy_threshold: 0`.
    #[error("healthy_threshold must be at least 1")]
    ZeroHealthyThreshold,
    /// Jitter outside [0, 1].
    #[error("health check jitter must be between 0 and 1, got {0}")]
    JitterOutOfRange(String),
    /// The HTTP probe's path is not an origin-form path.
    #[error("http probe path must be a path starting with '/', got {0:?}")]
    HttpPath(String),
    /// The HTTP probe expects no status at all.
    #[error("http probe must expect at least one status range")]
    NoExpectedStatuses,
    /// A reversed range, or one outside 100-599.
    #[error("http probe expected statuses {start}-{end} must be within 100-599, lowest first")]
    StatusRange {
        /// The range's first status.
        start: u16,
        /// The range's last status.
        end: u16,
    },
    /// The HTTP probe's host is not a valid header value.
    #[error("http probe host {0:?} is not a valid Host header")]
    HttpHost(String),
}

impl HealthCheckConfig {
    /// A health check configuration, rejecting one that could never run or never decide.
    pub fn try_new(
        probe: Probe,
        interval: Duration,
        timeout: Duration,
        unhealthy_threshold: u32,
        healthy_threshold: u32,
        jitter: f64,
    ) -> Result<Self, HealthCheckConfigError> {
        if interval.is_zero() {
            return Err(HealthCheckConfigError::ZeroInterval);
        }
        if timeout.is_zero() {
            return Err(HealthCheckConfigError::ZeroTimeout);
        }
        for (what, value) in [("interval", interval), ("timeout", timeout)] {
            if value > MAX_DURATION {
                return Err(HealthCheckConfigError::TooLong { what, value });
            }
        }
        if unhealthy_threshold == 0 {
            return Err(HealthCheckConfigError::ZeroUnhealthyThreshold);
        }
        if healthy_threshold == 0 {
            return Err(HealthCheckConfigError::ZeroHealthyThreshold);
        }
        // Written so that NaN fails too.
        if !(0.0..=1.0).contains(&jitter) {
            return Err(HealthCheckConfigError::JitterOutOfRange(jitter.to_string()));
        }
        let prepared = probe.prepare()?;
        Ok(Self {
            probe,
            prepared,
            interval,
            timeout,
            unhealthy_threshold,
            healthy_threshold,
            jitter,
        })
    }

    /// What each probe asks.
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// Time from one round's start to the next.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The longest one probe may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Failed probes in a row that make an endpoint unhealthy.
    pub fn unhealthy_threshold(&self) -> u32 {
        self.unhealthy_threshold
    }

    /// Passed probes in a row that make an unhealthy endpoint healthy.
    pub fn healthy_threshold(&self) -> u32 {
        self.healthy_threshold
    }

    /// The fraction of the interval a wait may be shortened by at random.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The wait before the next round: `interval`, shortened at random by up to `jitter`.
    fn next_wait(&self) -> Duration {
        if self.jitter == 0.0 {
            return self.interval;
        }
        self.interval.mul_f64(1.0 - self.jitter * fastrand::f64())
    }
}

/// The probing task of one service; see the module docs.
#[derive(Debug)]
pub struct HealthChecker {
    service: Arc<str>,
    config: Arc<HealthCheckConfig>,
    endpoints: Arc<EndpointSet>,
    /// How requests reach each endpoint (plaintext, TLS, TLS where advertised): probes
    /// go the same way. Set by each config build, read at each round.
    tls: Arc<ArcSwap<EndpointTls>>,
    metrics: HealthMetrics,
    tracker: HealthTracker,
}

/// Keeps a [`HealthChecker`] running; dropping it stops the checker.
#[derive(Debug)]
pub struct HealthCheckHandle {
    /// Dropping it tells the task to stop.
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthCheckHandle {
    /// Stops the checker and waits until it has released the endpoints it held out.
    pub async fn stop(self) {
        drop(self.stop);
        // The task never panics on purpose; if it did, there is nothing left to release.
        let _ = self.task.await;
    }
}

impl HealthChecker {
    /// Starts probing the endpoints of `service` in `endpoints`. Must be called inside a
    /// tokio runtime.
    pub fn spawn(
        service: Arc<str>,
        config: HealthCheckConfig,
        endpoints: Arc<EndpointSet>,
        tls: Arc<ArcSwap<EndpointTls>>,
        metrics: HealthMetrics,
    ) -> HealthCheckHandle {
        let tracker = HealthTracker::new(config.unhealthy_threshold, config.healthy_threshold);
        let checker = Self {
            service,
            config: Arc::new(config),
            endpoints,
            tls,
            metrics,
            tracker,
        };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(checker.run(stopped));
        HealthCheckHandle { stop, task }
    }

    /// Rounds of probes until told to stop, then releases what it holds.
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) {
        tracing::debug!(
            service = %self.service,
            probe = self.config.probe.kind(),
            interval = ?self.config.interval,
            "health checks started"
        );
        loop {
            let started = Instant::now();
            tokio::select! {
                _ = &mut stopped => break,
                () = self.round() => {}
            }
            let next = started + self.config.next_wait();
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep_until(next) => {}
            }
        }
        self.release();
    }

    /// Probes every endpoint of the current snapshot once.
    async fn round(&mut self) {
        let snapshot = self.endpoints.snapshot();
        self.tracker.sync(&snapshot);
        self.publish_counts();
        let config = self.config.clone();
        let tls = self.tls.load_full();
        let mut results = futures_util::stream::iter(snapshot.iter().cloned())
            .map(|endpoint| {
                let config = config.clone();
                let tls = tls.of(&endpoint).cloned();
                async move {
                    let result = config
                        .prepared
                        .run(endpoint.addr, tls.as_deref(), config.timeout)
                        .await;
                    (endpoint, result)
                }
            })
            .buffer_unordered(MAX_CONCURRENT_PROBES);
        while let Some((endpoint, result)) = results.next().await {
            self.apply(&endpoint, result);
        }
    }

    /// Counts one probe result, and holds the endpoint out or lets it back accordingly.
    fn apply(&mut self, endpoint: &Arc<Endpoint>, result: Result<(), ProbeError>) {
        let label = match &result {
            Ok(()) => "success",
            Err(error) => error.result_label(),
        };
        self.metrics.probe(&self.service, label);
        let Some(recorded) = self.tracker.record(endpoint, result.is_ok()) else {
            return;
        };
        endpoint
            .readiness
            .unhealthy
            .store(recorded.health == Health::Unhealthy, Ordering::Relaxed);
        if let Err(error) = &result {
            tracing::debug!(service = %self.service, endpoint = %endpoint.addr, %error, "health probe failed");
        }
        if !recorded.changed {
            return;
        }
        self.metrics
            .transition(&self.service, recorded.health.as_str());
        self.publish_counts();
        match (recorded.health, &result) {
            (Health::Unhealthy, Err(error)) => tracing::warn!(
                service = %self.service,
                endpoint = %endpoint.addr,
                failed_probes = self.config.unhealthy_threshold,
                %error,
                "endpoint unhealthy: held out of balancing"
            ),
            _ => tracing::info!(
                service = %self.service,
                endpoint = %endpoint.addr,
                passed_probes = self.config.healthy_threshold,
                "endpoint healthy again: back in balancing"
            ),
        }
    }

    fn publish_counts(&self) {
        let (healthy, unhealthy) = self.tracker.counts();
        self.metrics.endpoints(&self.service, healthy, unhealthy);
    }

    /// Lets every tracked endpoint back and forgets the gauges: a stopped checker
    /// holds nothing out.
    fn release(self) {
        for endpoint in self.tracker.endpoints() {
            endpoint.readiness.unhealthy.store(false, Ordering::Relaxed);
        }
        self.metrics.forget_endpoints(&self.service);
        tracing::debug!(service = %self.service, "health checks stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(
        interval: u64,
        timeout: u64,
        unhealthy: u32,
        healthy: u32,
        jitter: f64,
    ) -> Result<HealthCheckConfig, HealthCheckConfigError> {
        HealthCheckConfig::try_new(
            Probe::Tcp,
            Duration::from_millis(interval),
            Duration::from_millis(timeout),
            unhealthy,
            healthy,
            jitter,
        )
    }

    #[test]
    fn rejects_configs_that_make_no_sense() {
        use HealthCheckConfigError::*;
        assert_eq!(config(0, 1, 3, 2, 0.0).unwrap_err(), ZeroInterval);
        assert_eq!(config(1, 0, 3, 2, 0.0).unwrap_err(), ZeroTimeout);
        assert!(matches!(
            config(100_000_000, 1, 3, 2, 0.0).unwrap_err(),
            TooLong {
                what: "interval",
                ..
            }
        ));
        assert_eq!(config(1, 1, 0, 2, 0.0).unwrap_err(), ZeroUnhealthyThreshold);
        assert_eq!(config(1, 1, 3, 0, 0.0).unwrap_err(), ZeroHealthyThreshold);
        assert!(matches!(
            config(1, 1, 3, 2, 1.5).unwrap_err(),
            JitterOutOfRange(_)
        ));
        assert!(matches!(
            config(1, 1, 3, 2, f64::NAN).unwrap_err(),
            JitterOutOfRange(_)
        ));
        let bad_path = HealthCheckConfig::try_new(
            Probe::http("healthz"),
            DEFAULT_INTERVAL,
            DEFAULT_TIMEOUT,
            3,
            2,
            0.0,
        );
        assert!(matches!(bad_path, Err(HttpPath(_))));
        // A timeout longer than the interval is allowed: rounds never overlap.
        let ok = config(100, 1_000, 3, 2, 0.5).unwrap();
        assert_eq!(ok.probe().kind(), "tcp");
    }

    #[test]
    fn jitter_only_ever_shortens_the_wait() {
        let exact = config(1_000, 100, 3, 2, 0.0).unwrap();
        assert_eq!(exact.next_wait(), Duration::from_secs(1));
        let jittered = config(1_000, 100, 3, 2, 0.5).unwrap();
        for _ in 0..100 {
            let wait = jittered.next_wait();
            assert!(wait <= Duration::from_secs(1));
            assert!(wait >= Duration::from_millis(500));
        }
    }
}
