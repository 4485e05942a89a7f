//! What the breakers export: their state, their transitions, and the calls refused.
//!
//! Label sets are built on transitions (rare), never per call: the one per-call metric,
//! calls refused while open, is a counter each service breaker resolves once.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;

use super::state::{BreakerState, Transition};
use crate::core::labels::ServiceLabel;

/// Names one breaker: the service's (`endpoint=""`) or one endpoint's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BreakerLabels {
    /// The service guarded.
    pub service: ServiceLabel,
    /// The endpoint's address, empty for the service breaker.
    pub endpoint: String,
}

/// Labels of the transitions counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The service guarded.
    pub service: ServiceLabel,
    /// The endpoint's address, empty for the service breaker.
    pub endpoint: String,
    /// The state left.
    pub from: &'static str,
    /// The state entered.
    pub to: &'static str,
}

/// Labels of the refused-calls counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RejectedLabels {
    /// The service whose breaker refused.
    pub service: ServiceLabel,
}

/// The circuit breakers' metrics, shared by every breaker.
#[derive(Debug, Clone, Default)]
pub struct BreakerMetrics {
    /// 0 closed, 1 open, 2 half-open.
    state: Family<BreakerLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    rejected: Family<RejectedLabels, Counter>,
}

impl BreakerMetrics {
    /// Registers the breaker metrics in `registry`.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let metrics = Self::default();
        registry.register(
            "breaker_state",
            "Circuit breaker state (0 closed, 1 open, 2 half-open), by service and endpoint \
             (empty for the service breaker)",
            metrics.state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Circuit breaker state changes, by service, endpoint, from and to",
            metrics.transitions.clone(),
        );
        registry.register(
            "breaker_rejected",
            "Calls refused by an open (or fully probing half-open) service breaker",
            metrics.rejected.clone(),
        );
        metrics
    }

    /// Shows a new breaker, closed.
    pub(super) fn created(&self, service: &Arc<str>, endpoint: Option<SocketAddr>) {
        self.state
            .get_or_create(&breaker_labels(service, endpoint))
            .set(BreakerState::Closed.gauge());
    }

    /// Records a change of state.
    pub(super) fn transition(
        &self,
        service: &Arc<str>,
        endpoint: Option<SocketAddr>,
        transition: &Transition,
    ) {
        let labels = breaker_labels(service, endpoint);
        self.state.get_or_create(&labels).set(transition.to.gauge());
        self.transitions
            .get_or_create(&TransitionLabels {
                service: labels.service,
                endpoint: labels.endpoint,
                from: transition.from.as_str(),
                to: transition.to.as_str(),
            })
            .inc();
    }

    /// The counter of calls `service`'s breaker refuses, resolved once.
    pub(super) fn rejected(&self, service: &Arc<str>) -> Counter {
        self.rejected.get_or_create_owned(&RejectedLabels {
            service: ServiceLabel(service.clone()),
        })
    }

    /// Drops the state of a breaker that no longer exists (its endpoint vanished).
    /// Its transition counters go too, so that endpoint churn does not grow the series
    /// without bound.
    pub(super) fn forget(&self, service: &Arc<str>, endpoint: SocketAddr) {
        let labels = breaker_labels(service, Some(endpoint));
        self.state.remove(&labels);
        for (from, to) in TRANSITIONS {
            self.transitions.remove(&TransitionLabels {
                service: labels.service.clone(),
                endpoint: labels.endpoint.clone(),
                from: from.as_str(),
                to: to.as_str(),
            });
        }
    }
}

/// Every transition the state machine makes.
const TRANSITIONS: [(BreakerState, BreakerState); 4] = [
    (BreakerState::Closed, BreakerState::Open),
    (BreakerState::Open, BreakerState::HalfOpen),
    (BreakerState::HalfOpen, BreakerState::Closed),
    (BreakerState::HalfOpen, BreakerState::Open),
];

fn breaker_labels(service: &Arc<str>, endpoint: Option<SocketAddr>) -> BreakerLabels {
    BreakerLabels {
        service: ServiceLabel(service.clone()),
        endpoint: endpoint.map(|addr| addr.to_string()).unwrap_or_default(),
    }
}
