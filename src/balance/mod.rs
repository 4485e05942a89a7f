//! Endpoint sets and the choice of one endpoint per request.
//!
//! An [`EndpointSet`] holds the current snapshot of a service's endpoints behind an
//! `ArcSwap`: discovery replaces it whole, requests read it without a lock. Picking is
//! round-robin over the endpoints that are ready; the P2C peak-EWMA picker replaces it
//! with the balancing work.
//!
//! Readiness is a set of flags on each [`Endpoint`], each owned by one mechanism (active
//! health checks, outlier ejection, the endpoint circuit breaker). An endpoint is picked
//! only when no mechanism holds it out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::uri::Authority;

use crate::discovery::Instance;

/// One upstream endpoint and its live counters.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `addr` as a URI authority, made once so requests do not format it.
    pub authority: Authority,
    /// Requests sent and not yet answered.
    pub in_flight: AtomicUsize,
    /// Why the endpoint is held out of balancing, if it is.
    pub readiness: Readiness,
}

/// Flags that hold an endpoint out of balancing; each is set and cleared by its owner.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Set by active health checks after `unhealthy_threshold` failed probes.
    pub unhealthy: AtomicBool,
    /// Set by passive outlier ejection while the endpoint is ejected.
    pub ejected: AtomicBool,
    /// Set by the endpoint's circuit breaker while it is open.
    pub breaker_open: AtomicBool,
}

impl Readiness {
    /// Whether nothing holds the endpoint out.
    pub fn is_ready(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
            && !self.ejected.load(Ordering::Relaxed)
            && !self.breaker_open.load(Ordering::Relaxed)
    }
}

impl Endpoint {
    /// An endpoint at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let authority = Authority::try_from(addr.to_string())
            .expect("a socket address is always a valid authority");
        Self {
            addr,
            authority,
            in_flight: AtomicUsize::new(0),
            readiness: Readiness::default(),
        }
    }

    /// Whether the balancer may pick it.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }
}

/// A service's endpoints, swapped whole on every discovery snapshot.
#[derive(Debug, Default)]
pub struct EndpointSet {
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    next: AtomicUsize,
}

impl EndpointSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the set with `instances`, keeping the counters of endpoints that stay.
    pub fn update(&self, instances: &[Instance]) {
        let current = self.endpoints.load();
        let next: Vec<Arc<Endpoint>> = instances
            .iter()
            .map(|instance| {
                current
                    .iter()
                    .find(|e| e.addr == instance.addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(instance.addr)))
            })
            .collect();
        self.endpoints.store(Arc::new(next));
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Picks the next ready endpoint round-robin, or `None` when none is ready.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        self.pick_excluding(&[])
    }

    /// Like [`pick`](Self::pick), but prefers endpoints not in `avoid` (a retry goes
    /// elsewhere than the attempt that failed); falls back to them when nothing else is
    /// ready.
    pub fn pick_excluding(&self, avoid: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        let count = endpoints.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for offset in 0..count {
            let endpoint = &endpoints[(start + offset) % count];
            if !endpoint.is_ready() {
                continue;
            }
            if !avoid.contains(&endpoint.addr) {
                return Some(endpoint.clone());
            }
            fallback.get_or_insert_with(|| endpoint.clone());
        }
        fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(port: u16) -> Instance {
        Instance::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn round_robin_visits_every_endpoint_evenly() {
        let set = EndpointSet::new();
        set.update(&[instance(1), instance(2), instance(3)]);
        let mut counts = [0; 3];
        for _ in 0..300 {
            let port = set.pick().unwrap().addr.port();
            counts[usize::from(port) - 1] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn endpoints_held_out_are_skipped_and_avoidance_is_a_preference() {
        let set = EndpointSet::new();
        set.update(&[instance(1), instance(2)]);
        let first = set.snapshot()[0].clone();
        first.readiness.ejected.store(true, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(set.pick().unwrap().addr.port(), 2);
        }
        first.readiness.ejected.store(false, Ordering::Relaxed);
        let two = SocketAddr::from(([127, 0, 0, 1], 2));
        for _ in 0..4 {
            assert_eq!(set.pick_excluding(&[two]).unwrap().addr.port(), 1);
        }
        first.readiness.breaker_open.store(true, Ordering::Relaxed);
        assert_eq!(set.pick_excluding(&[two]).unwrap().addr.port(), 2);
        set.snapshot()[1]
            .readiness
            .unhealthy
            .store(true, Ordering::Relaxed);
        assert!(set.pick().is_none());
    }

    #[test]
    fn empty_set_picks_nothing_and_updates_keep_counters() {
        let set = EndpointSet::new();
        assert!(set.pick().is_none());
        set.update(&[instance(1)]);
        let first = set.pick().unwrap();
        first.in_flight.store(7, Ordering::Relaxed);
        set.update(&[instance(1), instance(2)]);
        let kept = set.snapshot()[0].clone();
        assert_eq!(kept.in_flight.load(Ordering::Relaxed), 7);
    }
}
