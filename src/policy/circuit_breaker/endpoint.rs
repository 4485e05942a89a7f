//! Endpoint breakers: one breaker per endpoint of a service, fed by every attempt's
//! outcome, holding the endpoint out of balancing while open.
//!
//! [`EndpointBreakers`] is an [`EndpointObserver`]: [`Forward`](crate::upstream::Forward)
//! tells it how each attempt on an endpoint ended. When an endpoint's breaker opens, it
//! sets `readiness.breaker_open` and the balancer skips the endpoint (the call goes to
//! another one rather than failing). When the open time has passed, it clears the flag
//! and the breaker is half-open.
//!
//! NOTE: half-open does not limit the traffic an endpoint gets. The balancer picks from
//! flags, and counting probes per endpoint there would cost every pick; so a half-open
//! endpoint takes its share of traffic and the outcomes decide: the first failure opens
//! it again (for twice as long, up to `max_open_for`), `half_open_requests` successes
//! close it. Only attempts that started after the breaker turned half-open count.
//!
//! The flag must be cleared when the open time has passed even if nothing happens: a
//! held-out endpoint gets no attempts, so no outcome would ever arrive to clear it, and
//! when every endpoint is held out the balancer fails calls before any observer hears of
//! them. So each open transition spawns a small task that sleeps until the open time has
//! passed and then lets probes through. At most one such task per endpoint is alive (an
//! open breaker does not open again before its task has run), and a task whose breaker
//! has moved on or vanished does nothing.
//!
//! Breakers are made on an endpoint's first outcome and pruned when a new one is made or
//! a snapshot is taken: an entry whose endpoint is no longer in the service's
//! [`EndpointSet`] goes, with its metrics. An endpoint that discovery removed and added
//! again is a new [`Endpoint`] (with fresh readiness), and gets a new breaker.
//!
//! A success on an endpoint whose breaker is settled (closed, no failure in a row, no
//! rolling window) changes nothing, so it is not recorded at all: the breaker publishes
//! its settled state on the endpoint itself ([`Endpoint::settled_breaker`], under the
//! breaker's lock), and such a success reads one atomic instead of the map and the
//! breaker. A breaker leaves its settled state only on a failure, which takes the lock
//! and withdraws the mark. A success racing that failure may then go unrecorded: the
//! same as if it had finished just before the failure.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use http::Response;
use tokio::time::Instant;

use super::state::{Breaker, BreakerState};
use super::{log_transition, BreakerConfig, BreakerMetrics, BreakerView};
use crate::balance::{Endpoint, EndpointSet};
use crate::core::addr_map::AddrMap;
use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;
use crate::upstream::EndpointObserver;

/// Ids of endpoint-breaker sets, unique in the process (0 is no set).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The breakers of one service's endpoints.
#[derive(Debug)]
pub struct EndpointBreakers {
    /// Unique in the process: what [`Endpoint::settled_breaker`] holds while this set's
    /// breaker of that endpoint is settled. Several sets may watch one endpoint (a
    /// reloaded config's stacks beside the old ones): each then only takes the mark from
    /// the other, which costs a success the fast path, never a wrong answer.
    id: u64,
    service: Arc<str>,
    config: Arc<BreakerConfig>,
    /// The service's endpoints: where a breaker finds its endpoint, and what decides
    /// which breakers are pruned.
    endpoints: Arc<EndpointSet>,
    metrics: BreakerMetrics,
    /// Held only to look up, add or prune an entry.
    breakers: Mutex<AddrMap<SocketAddr, Arc<EndpointBreaker>>>,
}

/// One endpoint's breaker.
#[derive(Debug)]
struct EndpointBreaker {
    addr: SocketAddr,
    /// The endpoint this breaker holds out; weak, so that a vanished endpoint is freed.
    endpoint: Weak<Endpoint>,
    breaker: Mutex<Breaker>,
}

impl EndpointBreakers {
    /// Breakers for the endpoints of `service` in `endpoints`, made as outcomes arrive.
    pub fn new(
        service: Arc<str>,
        config: BreakerConfig,
        endpoints: Arc<EndpointSet>,
        metrics: BreakerMetrics,
    ) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            service,
            config: Arc::new(config),
            endpoints,
            metrics,
            breakers: Mutex::new(AddrMap::default()),
        }
    }

    /// Every endpoint breaker as it stands, in address order.
    pub fn snapshot(&self) -> Vec<BreakerView> {
        let now = Instant::now();
        let entries: Vec<Arc<EndpointBreaker>> = {
            let mut breakers = self.lock();
            self.prune(&mut breakers, &self.endpoints.snapshot());
            breakers.values().cloned().collect()
        };
        let mut views: Vec<BreakerView> = entries
            .iter()
            .map(|entry| entry.view(&self.service, now))
            .collect();
        views.sort_by_key(|view| view.endpoint);
        views
    }

    /// The breaker of `endpoint`, made on its first outcome. `None` when the endpoint is
    /// no longer in the set (discovery removed it while the attempt was in flight).
    fn entry(&self, endpoint: &Endpoint, now: Instant) -> Option<Arc<EndpointBreaker>> {
        let mut breakers = self.lock();
        if let Some(entry) = breakers.get(&endpoint.addr) {
            if std::ptr::eq(entry.endpoint.as_ptr(), endpoint) {
                return Some(entry.clone());
            }
        }
        let snapshot = self.endpoints.snapshot();
        let current = snapshot
            .iter()
            .find(|candidate| std::ptr::eq(Arc::as_ptr(candidate), endpoint))?;
        self.prune(&mut breakers, &snapshot);
        let entry = Arc::new(EndpointBreaker {
            addr: endpoint.addr,
            endpoint: Arc::downgrade(current),
            breaker: Mutex::new(Breaker::new(self.config.clone(), now)),
        });
        self.metrics.created(&self.service, Some(endpoint.addr));
        breakers.insert(endpoint.addr, entry.clone());
        Some(entry)
    }

    /// Drops the breakers of endpoints not in `current`.
    fn prune(
        &self,
        breakers: &mut AddrMap<SocketAddr, Arc<EndpointBreaker>>,
        current: &[Arc<Endpoint>],
    ) {
        let live: AddrMap<SocketAddr, *const Endpoint> = current
            .iter()
            .map(|endpoint| (endpoint.addr, Arc::as_ptr(endpoint)))
            .collect();
        breakers.retain(|addr, entry| {
            let keep = live
                .get(addr)
                .is_some_and(|&endpoint| std::ptr::eq(endpoint, entry.endpoint.as_ptr()));
            if !keep {
                self.metrics.forget(&self.service, *addr);
            }
            keep
        });
    }

    fn lock(&self) -> MutexGuard<'_, AddrMap<SocketAddr, Arc<EndpointBreaker>>> {
        self.breakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `endpoint` as having this set's breaker settled, or withdraws the mark.
    /// Called under the lock of `breaker`, the endpoint's breaker in this set, after it
    /// changed, so that marks follow its changes in order.
    fn publish_settled(&self, endpoint: &Endpoint, breaker: &Breaker) {
        let mark = &endpoint.settled_breaker;
        if breaker.settled() {
            mark.store(self.id, Ordering::Release);
        } else {
            // Another set's mark is that set's to withdraw.
            let _ = mark.compare_exchange(self.id, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

impl EndpointObserver for EndpointBreakers {
    fn observe(
        &self,
        endpoint: &Endpoint,
        result: &Result<Response<ProxyBody>, ProxyError>,
        elapsed: Duration,
    ) {
        let failed = self.config.failure_on().matches(result);
        if !failed && endpoint.settled_breaker.load(Ordering::Acquire) == self.id {
            return;
        }
        let now = Instant::now();
        let Some(entry) = self.entry(endpoint, now) else {
            return;
        };
        let started = now.checked_sub(elapsed).unwrap_or(now);
        let mut breaker = entry.lock();
        let transition = breaker.observe(started, failed, now);
        self.publish_settled(endpoint, &breaker);
        let Some(transition) = transition else {
            return;
        };
        if transition.to == BreakerState::Open {
            entry.hold_out(endpoint, &breaker, &self.service, &self.metrics);
        }
        self.metrics
            .transition(&self.service, Some(entry.addr), &transition);
        drop(breaker);
        log_transition(&self.service, Some(entry.addr), &transition);
    }
}

impl EndpointBreaker {
    /// Holds the endpoint out of balancing while the (just opened) breaker is open, and
    /// schedules the end of it.
    fn hold_out(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        breaker: &Breaker,
        service: &Arc<str>,
        metrics: &BreakerMetrics,
    ) {
        let Some(until) = breaker.reopens_at() else {
            return;
        };
        // Without a runtime to clear the flag later, never set it: an endpoint held out
        // for good is worse than one that keeps failing. (Observers run on the request
        // path, inside the runtime, so this does not happen in practice.)
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(%service, endpoint = %self.addr, "no runtime: endpoint breaker cannot hold the endpoint out");
            return;
        };
        endpoint
            .readiness
            .breaker_open
            .store(true, Ordering::Relaxed);
        let generation = breaker.generation();
        let entry = Arc::downgrade(self);
        let service = service.clone();
        let metrics = metrics.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(entry) = entry.upgrade() {
                entry.let_probes_through(generation, until, &service, &metrics);
            }
        });
    }

    /// The open time has passed: half-open, and the endpoint back in balancing. Does
    /// nothing if the breaker left the open state of `generation` some other way.
    fn let_probes_through(
        &self,
        generation: u64,
        until: Instant,
        service: &Arc<str>,
        metrics: &BreakerMetrics,
    ) {
        let mut breaker = self.lock();
        if breaker.generation() != generation {
            return;
        }
        // The timer fired, so the time has come, whatever rounding the clock did.
        let Some(transition) = breaker.tick(Instant::now().max(until)) else {
            return;
        };
        if let Some(endpoint) = self.endpoint.upgrade() {
            endpoint
                .readiness
                .breaker_open
                .store(false, Ordering::Relaxed);
        }
        metrics.transition(service, Some(self.addr), &transition);
        drop(breaker);
        log_transition(service, Some(self.addr), &transition);
    }

    fn view(&self, service: &str, now: Instant) -> BreakerView {
        let breaker = self.lock();
        BreakerView {
            service: service.to_string(),
            endpoint: Some(self.addr),
            state: breaker.state().as_str(),
            consecutive_failures: breaker.consecutive_failures(),
            failure_rate: breaker.failure_rate(now),
            opened_for: breaker.opened_for(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use prometheus_client::registry::Registry as MetricsRegistry;

    use super::*;
    use crate::core::outcome::Conditions;
    use crate::discovery::Instance;

    const SECOND: Duration = Duration::from_secs(1);
    const MILLI: Duration = Duration::from_millis(1);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn config() -> BreakerConfig {
        let failure_on = Conditions {
            connect_failure: true,
            gateway_error: true,
            ..Default::default()
        };
        BreakerConfig::try_new(Some(2), None, SECOND, 3 * SECOND, 1, failure_on).unwrap()
    }

    struct Harness {
        set: Arc<EndpointSet>,
        breakers: EndpointBreakers,
        registry: MetricsRegistry,
    }

    impl Harness {
        fn new(ports: &[u16]) -> Self {
            let set = Arc::new(EndpointSet::new());
            let instances: Vec<Instance> = ports.iter().map(|&p| Instance::new(addr(p))).collect();
            set.update(&instances);
            let mut registry = MetricsRegistry::with_prefix("remora");
            let metrics = BreakerMetrics::register(&mut registry);
            let breakers = EndpointBreakers::new("users".into(), config(), set.clone(), metrics);
            Self {
                set,
                breakers,
                registry,
            }
        }

        fn endpoint(&self, port: u16) -> Arc<Endpoint> {
            self.set
                .snapshot()
                .iter()
                .find(|e| e.addr.port() == port)
                .cloned()
                .unwrap()
        }

        /// An attempt on `port` that took `elapsed` ended.
        fn attempt(&self, port: u16, failed: bool, elapsed: Duration) {
            let result = if failed {
                Err(ProxyError::Connect {
                    endpoint: addr(port).to_string(),
                    source: "refused".into(),
                    unsent: None,
                })
            } else {
                let mut response = Response::new(ProxyBody::empty());
                *response.status_mut() = StatusCode::OK;
                Ok(response)
            };
            self.breakers
                .observe(&self.endpoint(port), &result, elapsed);
        }

        fn held_out(&self, port: u16) -> bool {
            self.endpoint(port)
                .readiness
                .breaker_open
                .load(Ordering::Relaxed)
        }

        fn view(&self, port: u16) -> BreakerView {
            self.breakers
                .snapshot()
                .into_iter()
                .find(|view| view.endpoint == Some(addr(port)))
                .unwrap()
        }

        fn metrics(&self) -> String {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
            out
        }
    }

    /// Lets time pass and the woken timer tasks run.
    async fn advance(by: Duration) {
        tokio::time::advance(by).await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn holds_the_endpoint_out_while_open_and_lets_it_back_after() {
        let h = Harness::new(&[1, 2]);
        h.attempt(1, true, Duration::ZERO);
        assert!(!h.held_out(1));
        h.attempt(1, true, Duration::ZERO);
        assert!(h.held_out(1));
        assert!(!h.held_out(2));
        assert_eq!(h.view(1).state, "open");
        // The balancer now skips it.
        for _ in 0..4 {
            assert_eq!(h.set.pick().unwrap().addr.port(), 2);
        }

        advance(SECOND - MILLI).await;
        assert!(h.held_out(1));
        advance(MILLI).await;
        assert!(!h.held_out(1), "cleared when the open time has passed");
        assert_eq!(h.view(1).state, "half-open");

        // One success (half_open_requests: 1) closes it.
        h.attempt(1, false, Duration::ZERO);
        assert_eq!(h.view(1).state, "closed");
        assert_eq!(h.view(1).opened_for, None);
        assert!(!h.held_out(1));
        let metrics = h.metrics();
        assert!(
            metrics.contains(r#"remora_breaker_state{service="users",endpoint="127.0.0.1:1"} 0"#)
        );
        assert!(metrics.contains(
            r#"remora_breaker_transitions_total{service="users",endpoint="127.0.0.1:1",from="open",to="half-open"} 1"#
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_holds_it_out_again_for_longer() {
        let h = Harness::new(&[1]);
        h.attempt(1, true, Duration::ZERO);
        h.attempt(1, true, Duration::ZERO);
        advance(SECOND).await;
        assert!(!h.held_out(1));

        h.attempt(1, true, Duration::ZERO);
        assert!(h.held_out(1));
        assert_eq!(h.view(1).opened_for, Some(2 * SECOND));
        advance(2 * SECOND - MILLI).await;
        assert!(h.held_out(1));
        advance(MILLI).await;
        assert!(!h.held_out(1));
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_of_attempts_begun_earlier_are_not_probes() {
        let h = Harness::new(&[1]);
        h.attempt(1, true, Duration::ZERO);
        h.attempt(1, true, Duration::ZERO);
        // Still open: a late answer from before the trip changes nothing.
        h.attempt(1, false, Duration::ZERO);
        assert_eq!(h.view(1).state, "open");
        advance(SECOND).await;
        // Began two seconds ago, before half-open: ignored either way.
        h.attempt(1, true, 2 * SECOND);
        h.attempt(1, false, 2 * SECOND);
        assert_eq!(h.view(1).state, "half-open");
        assert!(!h.held_out(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_breaker_marks_its_endpoint_and_a_failure_withdraws_the_mark() {
        let h = Harness::new(&[1]);
        let mark = || h.endpoint(1).settled_breaker.load(Ordering::Relaxed);
        assert_eq!(mark(), 0);
        // The first outcome makes the breaker (listed), settled.
        h.attempt(1, false, Duration::ZERO);
        assert_eq!(mark(), h.breakers.id);
        assert_eq!(h.view(1).state, "closed");
        h.attempt(1, true, Duration::ZERO);
        assert_eq!(mark(), 0, "one failure in a row: a success must reset it");
        h.attempt(1, false, Duration::ZERO);
        assert_eq!(mark(), h.breakers.id);
        assert_eq!(h.view(1).consecutive_failures, 0);
        // Two failures in a row still trip it: the skipped successes changed nothing.
        h.attempt(1, false, Duration::ZERO);
        h.attempt(1, true, Duration::ZERO);
        h.attempt(1, true, Duration::ZERO);
        assert_eq!(h.view(1).state, "open");
        assert_eq!(mark(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn breakers_of_vanished_endpoints_are_pruned() {
        let h = Harness::new(&[1, 2]);
        h.attempt(1, true, Duration::ZERO);
        h.attempt(2, false, Duration::ZERO);
        assert_eq!(h.breakers.snapshot().len(), 2);

        h.set.update(&[Instance::new(addr(2))]);
        let views = h.breakers.snapshot();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].endpoint, Some(addr(2)));
        assert!(!h.metrics().contains("127.0.0.1:1"));

        // Back at the same address: a new endpoint, a new (closed) breaker.
        h.set
            .update(&[Instance::new(addr(1)), Instance::new(addr(2))]);
        h.attempt(1, true, Duration::ZERO);
        assert_eq!(h.view(1).consecutive_failures, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_for_a_vanished_endpoint_does_nothing() {
        let h = Harness::new(&[1, 2]);
        let old = h.endpoint(1);
        h.attempt(1, true, Duration::ZERO);
        h.attempt(1, true, Duration::ZERO);
        assert!(old.readiness.breaker_open.load(Ordering::Relaxed));
        h.set.update(&[Instance::new(addr(2))]);
        assert!(h.breakers.snapshot().is_empty());
        advance(SECOND).await;
        // The pruned breaker's timer found no breaker: it neither touched the old
        // endpoint nor brought its metrics back.
        assert!(old.readiness.breaker_open.load(Ordering::Relaxed));
        assert!(h.breakers.snapshot().is_empty());
        assert!(!h.metrics().contains("127.0.0.1:1"));
    }
}
