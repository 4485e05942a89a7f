//! The health of each endpoint as a checker counts it: a state and a streak of probe
//! results that contradict it.
//!
//! An endpoint is `Healthy` until `unhealthy_threshold` probes in a row fail, then
//! `Unhealthy` until `healthy_threshold` probes in a row succeed. A result that agrees with
//! the state resets the streak, so thresholds count consecutive results only.
//!
//! Entries follow the endpoint set: [`HealthTracker::sync`] adds an entry for every new
//! endpoint (healthy: an endpoint discovery just added takes traffic at once, rather than
//! waiting `healthy_threshold` intervals; and a service starting up is not left with no
//! endpoint at all) and drops the entries of endpoints that vanished. An endpoint is
//! known by its address and its identity: one that discovery removed and added again is
//! a new [`Endpoint`] and starts afresh.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::balance::Endpoint;
use crate::core::addr_map::AddrMap;

/// An endpoint's health as the checker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    /// In rotation as far as health checks go.
    Healthy,
    /// Held out of balancing (`readiness.unhealthy`).
    Unhealthy,
}

impl Health {
    /// The label value.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// What one probe result did to an endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Recorded {
    /// The health after the result.
    pub(super) health: Health,
    /// Whether the result changed it.
    pub(super) changed: bool,
}

/// Every checked endpoint of one service.
#[derive(Debug)]
pub(super) struct HealthTracker {
    /// Failed probes in a row that make a healthy endpoint unhealthy (at least 1).
    unhealthy_threshold: u32,
    /// Passed probes in a row that make an unhealthy endpoint healthy (at least 1).
    healthy_threshold: u32,
    entries: AddrMap<SocketAddr, Tracked>,
}

#[derive(Debug)]
struct Tracked {
    /// Kept so that the checker can release it when it stops; dropped when the endpoint
    /// leaves the set.
    endpoint: Arc<Endpoint>,
    health: Health,
    /// Results in a row that disagree with `health`.
    streak: u32,
}

impl HealthTracker {
    /// An empty tracker with these thresholds (each at least 1).
    pub(super) fn new(unhealthy_threshold: u32, healthy_threshold: u32) -> Self {
        Self {
            unhealthy_threshold,
            healthy_threshold,
            entries: AddrMap::default(),
        }
    }

    /// Follows the endpoint set: new endpoints start healthy, vanished ones are forgotten.
    pub(super) fn sync(&mut self, snapshot: &[Arc<Endpoint>]) {
        self.entries.retain(|addr, tracked| {
            snapshot
                .iter()
                .any(|endpoint| endpoint.addr == *addr && Arc::ptr_eq(endpoint, &tracked.endpoint))
        });
        for endpoint in snapshot {
            let known = self
                .entries
                .get(&endpoint.addr)
                .is_some_and(|tracked| Arc::ptr_eq(&tracked.endpoint, endpoint));
            if !known {
                self.entries.insert(
                    endpoint.addr,
                    Tracked {
                        endpoint: endpoint.clone(),
                        health: Health::Healthy,
                        streak: 0,
                    },
                );
            }
        }
    }

    /// Counts one probe result of `endpoint`; `None` when the endpoint is no longer
    /// tracked (it vanished while the probe ran).
    pub(super) fn record(&mut self, endpoint: &Arc<Endpoint>, passed: bool) -> Option<Recorded> {
        let tracked = self
            .entries
            .get_mut(&endpoint.addr)
            .filter(|tracked| Arc::ptr_eq(&tracked.endpoint, endpoint))?;
        let (agrees, threshold, other) = match tracked.health {
            Health::Healthy => (passed, self.unhealthy_threshold, Health::Unhealthy),
            Health::Unhealthy => (!passed, self.healthy_threshold, Health::Healthy),
        };
        if agrees {
            tracked.streak = 0;
            return Some(Recorded {
                health: tracked.health,
                changed: false,
            });
        }
        tracked.streak += 1;
        if tracked.streak < threshold {
            return Some(Recorded {
                health: tracked.health,
                changed: false,
            });
        }
        tracked.health = other;
        tracked.streak = 0;
        Some(Recorded {
            health: other,
            changed: true,
        })
    }

    /// How many tracked endpoints are healthy and unhealthy.
    pub(super) fn counts(&self) -> (usize, usize) {
        let unhealthy = self
            .entries
            .values()
            .filter(|tracked| tracked.health == Health::Unhealthy)
            .count();
        (self.entries.len() - unhealthy, unhealthy)
    }

    /// The endpoints tracked now.
    pub(super) fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.entries.values().map(|tracked| &tracked.endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port))))
    }

    fn health(tracker: &mut HealthTracker, endpoint: &Arc<Endpoint>, passed: bool) -> Health {
        tracker.record(endpoint, passed).unwrap().health
    }

    #[test]
    fn thresholds_count_consecutive_results_only() {
        let one = endpoint(1);
        let mut tracker = HealthTracker::new(3, 2);
        tracker.sync(std::slice::from_ref(&one));
        assert_eq!(health(&mut tracker, &one, false), Health::Healthy);
        assert_eq!(health(&mut tracker, &one, false), Health::Healthy);
        // A pass breaks the streak.
        assert_eq!(health(&mut tracker, &one, true), Health::Healthy);
        assert_eq!(health(&mut tracker, &one, false), Health::Healthy);
        assert_eq!(health(&mut tracker, &one, false), Health::Healthy);
        let third = tracker.record(&one, false).unwrap();
        assert_eq!(
            third,
            Recorded {
                health: Health::Unhealthy,
                changed: true
            }
        );
        assert_eq!(tracker.counts(), (0, 1));

        assert_eq!(health(&mut tracker, &one, true), Health::Unhealthy);
        assert_eq!(health(&mut tracker, &one, false), Health::Unhealthy);
        assert_eq!(health(&mut tracker, &one, true), Health::Unhealthy);
        let back = tracker.record(&one, true).unwrap();
        assert_eq!(
            back,
            Recorded {
                health: Health::Healthy,
                changed: true
            }
        );
        // Further passes change nothing.
        assert!(!tracker.record(&one, true).unwrap().changed);
    }

    #[test]
    fn follows_the_endpoint_set() {
        let (one, two) = (endpoint(1), endpoint(2));
        let mut tracker = HealthTracker::new(1, 1);
        tracker.sync(&[one.clone(), two.clone()]);
        assert_eq!(health(&mut tracker, &one, false), Health::Unhealthy);
        assert_eq!(tracker.counts(), (1, 1));

        // One vanishes: its state goes, and a late result for it is ignored.
        tracker.sync(std::slice::from_ref(&two));
        assert_eq!(tracker.counts(), (1, 0));
        assert!(tracker.record(&one, false).is_none());

        // Back at the same address, it is a new endpoint: healthy until probed.
        let again = endpoint(1);
        tracker.sync(&[again.clone(), two.clone()]);
        assert_eq!(tracker.counts(), (2, 0));
        assert!(tracker.record(&one, false).is_none(), "the old endpoint");
        assert_eq!(health(&mut tracker, &again, true), Health::Healthy);
        assert_eq!(tracker.endpoints().count(), 2);
    }
}
