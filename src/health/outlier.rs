//! Passive outlier ejection: an endpoint whose calls keep failing is taken out of
//! balancing for a while, longer each time it happens again.
//!
//! [`OutlierDetector`] is an [`EndpointObserver`]: [`Forward`](crate::upstream::Forward)
//! tells it how every attempt on an endpoint ended. After `consecutive_failures` failures
//! in a row (what counts as one is `failure_on`), it ejects the endpoint: sets
//! `readiness.ejected` for `base_ejection × times_ejected`, capped at `max_ejection`. A
//! success resets the count; failures that arrive while the endpoint is ejected (calls
//! already in flight) are ignored.
//!
//! - **The cap.** Ejecting never leaves more than `max_ejection_percent` of the service's
//!   endpoints ejected (counted over the current endpoint set): with 4 endpoints and 50%,
//!   at most 2. An ejection the cap refuses is counted (`outlier_ejections_capped`) and
//!   the endpoint's failure count is kept, so its next failure tries again: it is ejected
//!   as soon as room is made. NOTE: so a service with a single endpoint is never ejected
//!   below 100%: ejecting it would turn its failures into "no healthy endpoint" for
//!   everyone, which is no better.
//! - **The return.** Each ejection spawns a small task that sleeps until the ejection
//!   ends and clears the flag: a held-out endpoint gets no calls, so no outcome would ever
//!   arrive to bring it back. A task clears only the ejection it was spawned for.
//! - **Decay.** `times_ejected` goes down by one for every `base_ejection` the endpoint
//!   spends back in rotation without being ejected (computed when it is next ejected), so
//!   an endpoint that failed once long ago starts again from `base_ejection`.
//!
//! Records are made on an endpoint's first failure and dropped when nothing is left to
//! remember (no failures, not ejected, `times_ejected` decayed to zero) or when the
//! endpoint leaves the set. An endpoint that discovery removed and added again is a new
//! [`Endpoint`] and starts afresh.
//!
//! NOTE: `observe` takes one short lock per call (a map lookup and a counter); ejecting,
//! which reads the endpoint set, happens under it too, but only on the N-th failure.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use http::Response;
use tokio::time::Instant;

use super::HealthMetrics;
use crate::balance::{Endpoint, EndpointSet};
use crate::core::addr_map::AddrMap;
use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;
use crate::core::outcome::Conditions;
use crate::upstream::EndpointObserver;

/// The longest ejection accepted: longer is a typo, not a policy.
const MAX_EJECTION_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// When an endpoint is ejected and for how long. Valid by construction
/// ([`OutlierConfig::try_new`]); [`Default`] is 5 failures, 30 s growing to 300 s, 50%.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint (at least 1).
    consecutive_failures: u32,
    /// What counts as a failure (names at least one kind).
    failure_on: Conditions,
    /// How long the first ejection lasts (non-zero).
    base_ejection: Duration,
    /// The cap of `base_ejection × times_ejected` (≥ `base_ejection`).
    max_ejection: Duration,
    /// The most of the service's endpoints ever ejected at once, in percent (1 to 100).
    max_ejection_percent: u8,
}

/// What is wrong with an outlier ejection configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutlierConfigError {
    /// `consecutive_failures: 0`.
    #[error("outlier consecutive_failures must be at least 1")]
    ZeroConsecutiveFailures,
    /// `failure_on` names nothing, so nothing could ever be ejected.
    #[error("outlier failure_on must name at least one kind of failure")]
    NoFailureConditions,
    /// A zero base ejection.
    #[error("outlier base_ejection must be non-zero")]
    ZeroBaseEjection,
    /// `max_ejection < base_ejection`.
    #[error("outlier max_ejection ({max:?}) must be at least base_ejection ({base:?})")]
    MaxBelowBase {
        /// `base_ejection`.
        base: Duration,
        /// `max_ejection`.
        max: Duration,
    },
    /// `max_ejection` beyond a day.
    #[error("outlier max_ejection must be at most {MAX_EJECTION_LIMIT:?}, got {0:?}")]
    MaxTooLong(Duration),
    /// `max_ejection_percent` outside 1..=100.
    #[error("outlier max_ejection_percent must be between 1 and 100, got {0}")]
    PercentOutOfRange(u8),
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_on: Self::default_failure_on(),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierConfig {
    /// An outlier ejection configuration, rejecting one that could never eject or whose
    /// durations make no sense.
    pub fn try_new(
        consecutive_failures: u32,
        failure_on: Conditions,
        base_ejection: Duration,
        max_ejection: Duration,
        max_ejection_percent: u8,
    ) -> Result<Self, OutlierConfigError> {
        if consecutive_failures == 0 {
            return Err(OutlierConfigError::ZeroConsecutiveFailures);
        }
        if failure_on == Conditions::default() {
            return Err(OutlierConfigError::NoFailureConditions);
        }
        if base_ejection.is_zero() {
            return Err(OutlierConfigError::ZeroBaseEjection);
        }
        if max_ejection < base_ejection {
            return Err(OutlierConfigError::MaxBelowBase {
                base: base_ejection,
                max: max_ejection,
            });
        }
        if max_ejection > MAX_EJECTION_LIMIT {
            return Err(OutlierConfigError::MaxTooLong(max_ejection));
        }
        if !(1..=100).contains(&max_ejection_percent) {
            return Err(OutlierConfigError::PercentOutOfRange(max_ejection_percent));
        }
        Ok(Self {
            consecutive_failures,
            failure_on,
            base_ejection,
            max_ejection,
            max_ejection_percent,
        })
    }

    /// What counts as a failure unless configured: any 5xx, gateway errors (502-504) and
    /// connect failures.
    pub fn default_failure_on() -> Conditions {
        Conditions {
            connect_failure: true,
            gateway_error: true,
            server_error: true,
            ..Conditions::default()
        }
    }

    /// Failures in a row that eject an endpoint.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// What counts as a failure.
    pub fn failure_on(&self) -> &Conditions {
        &self.failure_on
    }

    /// How long the first ejection lasts.
    pub fn base_ejection(&self) -> Duration {
        self.base_ejection
    }

    /// The longest an ejection lasts.
    pub fn max_ejection(&self) -> Duration {
        self.max_ejection
    }

    /// The most of the service's endpoints ejected at once, in percent.
    pub fn max_ejection_percent(&self) -> u8 {
        self.max_ejection_percent
    }

    /// How long the `times`-th ejection lasts.
    fn ejection_for(&self, times: u32) -> Duration {
        self.base_ejection
            .saturating_mul(times)
            .min(self.max_ejection)
    }
}

/// One endpoint's ejection record as the admin listener shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EjectionView {
    /// The service.
    pub service: String,
    /// The endpoint.
    pub endpoint: SocketAddr,
    /// Failures in a row counted since the last success or return.
    pub consecutive_failures: u32,
    /// Ejections so far, after decay; the next one lasts `base_ejection × (this + 1)`.
    pub times_ejected: u32,
    /// The time left of the current ejection; `None` while in rotation.
    #[serde(with = "humantime_serde")]
    pub ejected_for: Option<Duration>,
}

/// Passive outlier ejection for one service's endpoints; see the module docs.
#[derive(Debug)]
pub struct OutlierDetector {
    service: Arc<str>,
    config: Arc<OutlierConfig>,
    /// The service's endpoints: where a record finds its endpoint, what the cap counts,
    /// and what decides which records are pruned.
    endpoints: Arc<EndpointSet>,
    metrics: HealthMetrics,
    /// Shared weakly with the return timers. Held only for bookkeeping, never across an
    /// await.
    records: Arc<Mutex<Records>>,
}

#[derive(Debug, Default)]
struct Records {
    by_addr: AddrMap<SocketAddr, Record>,
    /// Counts every ejection: a return timer ends only the ejection it was spawned for.
    generation: u64,
}

#[derive(Debug)]
struct Record {
    /// Weak, so that a vanished endpoint is freed.
    endpoint: Weak<Endpoint>,
    consecutive_failures: u32,
    /// Ejections so far, before the decay since `returned_at`.
    times_ejected: u32,
    /// Set while ejected.
    ejection: Option<Ejection>,
    /// When the endpoint last came back from an ejection.
    returned_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Ejection {
    until: Instant,
    generation: u64,
}

impl Record {
    fn new(endpoint: Weak<Endpoint>) -> Self {
        Self {
            endpoint,
            consecutive_failures: 0,
            times_ejected: 0,
            ejection: None,
            returned_at: None,
        }
    }

    fn is_for(&self, endpoint: &Endpoint) -> bool {
        std::ptr::eq(self.endpoint.as_ptr(), endpoint)
    }

    /// `times_ejected` after decay: one less per `base` spent in rotation since the
    /// last return.
    fn times_ejected_at(&self, now: Instant, base: Duration) -> u32 {
        let (Some(returned), None) = (self.returned_at, self.ejection) else {
            return self.times_ejected;
        };
        let periods = now.saturating_duration_since(returned).as_nanos() / base.as_nanos();
        let periods = u32::try_from(periods).unwrap_or(u32::MAX);
        self.times_ejected.saturating_sub(periods)
    }
}

impl Records {
    fn ejected_count(&self) -> usize {
        self.by_addr
            .values()
            .filter(|record| record.ejection.is_some())
            .count()
    }

    /// Drops the records of endpoints not in `current`.
    fn prune(&mut self, current: &[Arc<Endpoint>]) {
        self.by_addr.retain(|addr, record| {
            current
                .iter()
                .any(|endpoint| endpoint.addr == *addr && record.is_for(endpoint))
        });
    }

    /// Ends the ejection `generation` of `addr`, if it is still the one in force.
    fn end_ejection(&mut self, addr: SocketAddr, generation: u64, now: Instant) -> bool {
        let Some(record) = self.by_addr.get_mut(&addr) else {
            return false;
        };
        if record.ejection.map(|e| e.generation) != Some(generation) {
            return false;
        }
        record.ejection = None;
        record.consecutive_failures = 0;
        record.returned_at = Some(now);
        true
    }
}

impl OutlierDetector {
    /// Outlier ejection for the endpoints of `service` in `endpoints`.
    pub fn new(
        service: Arc<str>,
        config: OutlierConfig,
        endpoints: Arc<EndpointSet>,
        metrics: HealthMetrics,
    ) -> Self {
        Self {
            service,
            config: Arc::new(config),
            endpoints,
            metrics,
            records: Arc::new(Mutex::new(Records::default())),
        }
    }

    /// Every endpoint with something on record (failures, an ejection, or ejections not
    /// yet decayed), in address order.
    pub fn snapshot(&self) -> Vec<EjectionView> {
        let now = Instant::now();
        let mut records = self.lock();
        records.prune(&self.endpoints.snapshot());
        self.metrics
            .set_ejected(&self.service, records.ejected_count());
        let mut views: Vec<EjectionView> = records
            .by_addr
            .iter()
            .map(|(addr, record)| EjectionView {
                service: self.service.to_string(),
                endpoint: *addr,
                consecutive_failures: record.consecutive_failures,
                times_ejected: record.times_ejected_at(now, self.config.base_ejection),
                ejected_for: record
                    .ejection
                    .map(|e| e.until.saturating_duration_since(now)),
            })
            .collect();
        views.sort_by_key(|view| view.endpoint);
        views
    }

    /// A success: the count starts again, and a record with nothing left to remember goes.
    fn succeeded(&self, records: &mut Records, endpoint: &Endpoint, now: Instant) {
        let Some(record) = records.by_addr.get_mut(&endpoint.addr) else {
            return;
        };
        if !record.is_for(endpoint) {
            return;
        }
        record.consecutive_failures = 0;
        if record.ejection.is_none() && record.times_ejected_at(now, self.config.base_ejection) == 0
        {
            records.by_addr.remove(&endpoint.addr);
        }
    }

    /// A failure: counted, and the endpoint ejected on the N-th in a row.
    fn failed(&self, records: &mut Records, endpoint: &Endpoint, now: Instant) {
        let Some(record) = self.record(records, endpoint) else {
            return;
        };
        if record.ejection.is_some() {
            return;
        }
        record.consecutive_failures = record.consecutive_failures.saturating_add(1);
        if record.consecutive_failures >= self.config.consecutive_failures {
            self.eject(records, endpoint.addr, now);
        }
    }

    /// The record of `endpoint`, made on its first failure. `None` when the endpoint is
    /// no longer in the set (discovery removed it while the attempt was in flight).
    fn record<'r>(&self, records: &'r mut Records, endpoint: &Endpoint) -> Option<&'r mut Record> {
        let known = records
            .by_addr
            .get(&endpoint.addr)
            .is_some_and(|record| record.is_for(endpoint));
        if !known {
            let snapshot = self.endpoints.snapshot();
            let current = snapshot
                .iter()
                .find(|candidate| std::ptr::eq(Arc::as_ptr(candidate), endpoint))?;
            records.prune(&snapshot);
            records
                .by_addr
                .insert(endpoint.addr, Record::new(Arc::downgrade(current)));
            self.metrics
                .set_ejected(&self.service, records.ejected_count());
        }
        records.by_addr.get_mut(&endpoint.addr)
    }

    /// Ejects `addr` unless the cap forbids it, and schedules its return.
    fn eject(&self, records: &mut Records, addr: SocketAddr, now: Instant) {
        let snapshot = self.endpoints.snapshot();
        let ejected = snapshot
            .iter()
            .filter(|endpoint| endpoint.readiness.ejected.load(Ordering::Relaxed))
            .count();
        let allowed = snapshot.len() * usize::from(self.config.max_ejection_percent);
        if (ejected + 1) * 100 > allowed {
            self.metrics.capped(&self.service);
            tracing::debug!(service = %self.service, endpoint = %addr, ejected, "outlier not ejected: max_ejection_percent reached");
            return;
        }
        // Without a runtime to bring it back later, never eject: an endpoint ejected for
        // good is worse than one that keeps failing. (Observers run on the request path,
        // inside the runtime, so this does not happen in practice.)
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(service = %self.service, endpoint = %addr, "no runtime: outlier cannot be ejected");
            return;
        };
        records.generation += 1;
        let generation = records.generation;
        let Some(record) = records.by_addr.get_mut(&addr) else {
            return;
        };
        let Some(endpoint) = record.endpoint.upgrade() else {
            return;
        };
        let times = record
            .times_ejected_at(now, self.config.base_ejection)
            .saturating_add(1);
        let lasts = self.config.ejection_for(times);
        let until = now + lasts;
        record.times_ejected = times;
        record.consecutive_failures = 0;
        record.ejection = Some(Ejection { until, generation });
        endpoint.readiness.ejected.store(true, Ordering::Relaxed);
        self.metrics.ejected(&self.service, records.ejected_count());
        tracing::warn!(
            service = %self.service,
            endpoint = %addr,
            failures = self.config.consecutive_failures,
            times_ejected = times,
            ejected_for = ?lasts,
            "outlier ejected: held out of balancing"
        );
        let timer = ReturnTimer {
            records: Arc::downgrade(&self.records),
            endpoint: Arc::downgrade(&endpoint),
            addr,
            generation,
            service: self.service.clone(),
            metrics: self.metrics.clone(),
        };
        runtime.spawn(timer.run(until));
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        lock(&self.records)
    }
}

impl EndpointObserver for OutlierDetector {
    fn observe(
        &self,
        endpoint: &Endpoint,
        result: &Result<Response<ProxyBody>, ProxyError>,
        _elapsed: Duration,
    ) {
        let failed = self.config.failure_on.matches(result);
        let now = Instant::now();
        let mut records = self.lock();
        if failed {
            self.failed(&mut records, endpoint, now);
        } else {
            self.succeeded(&mut records, endpoint, now);
        }
    }
}

/// Brings one ejected endpoint back when its ejection ends.
struct ReturnTimer {
    /// Weak: a detector that is gone keeps no timer state alive.
    records: Weak<Mutex<Records>>,
    endpoint: Weak<Endpoint>,
    addr: SocketAddr,
    generation: u64,
    service: Arc<str>,
    metrics: HealthMetrics,
}

impl ReturnTimer {
    async fn run(self, until: Instant) {
        tokio::time::sleep_until(until).await;
        let Some(records) = self.records.upgrade() else {
            // The detector is gone: nothing owns the ejection any more.
            self.clear_flag();
            return;
        };
        let mut records = lock(&records);
        let ended = records.end_ejection(self.addr, self.generation, Instant::now());
        // Cleared either way: when the ejection is no longer on record, the endpoint left
        // the set (its record was pruned) and nobody else would clear the flag.
        self.clear_flag();
        if ended {
            self.metrics
                .set_ejected(&self.service, records.ejected_count());
            drop(records);
            tracing::info!(service = %self.service, endpoint = %self.addr, "outlier back in balancing");
        }
    }

    fn clear_flag(&self) {
        if let Some(endpoint) = self.endpoint.upgrade() {
            endpoint.readiness.ejected.store(false, Ordering::Relaxed);
        }
    }
}

fn lock(records: &Mutex<Records>) -> MutexGuard<'_, Records> {
    records.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
