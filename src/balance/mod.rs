//! Endpoint sets and the choice of one endpoint per request.
//!
//! An [`EndpointSet`] holds the current snapshot of a service's endpoints behind an
//! `ArcSwap`: discovery replaces it whole, requests read it without a lock. Picking is
//! round-robin for now; the P2C peak-EWMA picker replaces it with the balancing work.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
        }
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

    /// Picks the next endpoint round-robin, or `None` when the set is empty.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        if endpoints.is_empty() {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        Some(endpoints[index].clone())
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
