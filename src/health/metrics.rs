//! What health checking and outlier ejection export.
//!
//! Every series is labelled by service only (and a small fixed set of values): endpoint
//! churn never grows the series. Label sets are built per probe or per ejection, both
//! far rarer than requests; nothing here is recorded per request.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;

use crate::core::labels::{ByService, PerService, ServiceLabel};

/// Labels of the probe counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProbeLabels {
    /// The service whose endpoint was probed.
    pub service: ServiceLabel,
    /// `success`, `failure` or `timeout`.
    pub result: &'static str,
}

/// Labels of the endpoints-by-health gauge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HealthStateLabels {
    /// The service.
    pub service: ServiceLabel,
    /// `healthy` or `unhealthy`.
    pub state: &'static str,
}

/// The metrics of active health checks and outlier ejection, shared by every service.
#[derive(Debug, Clone, Default)]
pub struct HealthMetrics {
    probes: Family<ProbeLabels, Counter>,
    endpoints: Family<HealthStateLabels, Gauge>,
    transitions: Family<HealthStateLabels, Counter>,
    ejections: PerService<Counter>,
    ejected: PerService<Gauge>,
    capped: PerService<Counter>,
}

impl HealthMetrics {
    /// Registers the health and outlier metrics in `registry`.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let metrics = Self::default();
        registry.register(
            "health_probes",
            "Active health probes, by service and result (success, failure, timeout)",
            metrics.probes.clone(),
        );
        registry.register(
            "health_endpoints",
            "Endpoints under active health checks, by service and state (healthy, unhealthy)",
            metrics.endpoints.clone(),
        );
        registry.register(
            "health_transitions",
            "Endpoints that changed health, by service and the state entered",
            metrics.transitions.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by passive outlier detection, by service",
            metrics.ejections.clone(),
        );
        registry.register(
            "outlier_ejected",
            "Endpoints currently ejected by passive outlier detection, by service",
            metrics.ejected.clone(),
        );
        registry.register(
            "outlier_ejections_capped",
            "Ejections not made because max_ejection_percent of the service was already \
             ejected, by service",
            metrics.capped.clone(),
        );
        metrics
    }

    /// Counts one probe's result.
    pub(super) fn probe(&self, service: &Arc<str>, result: &'static str) {
        self.probes
            .get_or_create(&ProbeLabels {
                service: ServiceLabel(service.clone()),
                result,
            })
            .inc();
    }

    /// Sets how many checked endpoints are healthy and unhealthy.
    pub(super) fn endpoints(&self, service: &Arc<str>, healthy: usize, unhealthy: usize) {
        for (state, count) in [("healthy", healthy), ("unhealthy", unhealthy)] {
            self.endpoints
                .get_or_create(&health_labels(service, state))
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Counts an endpoint entering `state` (`healthy` or `unhealthy`).
    pub(super) fn transition(&self, service: &Arc<str>, state: &'static str) {
        self.transitions
            .get_or_create(&health_labels(service, state))
            .inc();
    }

    /// Drops the gauges of a service whose checker stopped: it no longer knows.
    pub(super) fn forget_endpoints(&self, service: &Arc<str>) {
        for state in ["healthy", "unhealthy"] {
            self.endpoints.remove(&health_labels(service, state));
        }
    }

    /// Counts an ejection and sets how many endpoints are now ejected.
    pub(super) fn ejected(&self, service: &Arc<str>, now_ejected: usize) {
        self.ejections.get_or_create(&outlier_labels(service)).inc();
        self.set_ejected(service, now_ejected);
    }

    /// Sets how many endpoints are ejected.
    pub(super) fn set_ejected(&self, service: &Arc<str>, count: usize) {
        self.ejected
            .get_or_create(&outlier_labels(service))
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts an ejection refused by `max_ejection_percent`.
    pub(super) fn capped(&self, service: &Arc<str>) {
        self.capped.get_or_create(&outlier_labels(service)).inc();
    }
}

fn health_labels(service: &Arc<str>, state: &'static str) -> HealthStateLabels {
    HealthStateLabels {
        service: ServiceLabel(service.clone()),
        state,
    }
}

fn outlier_labels(service: &Arc<str>) -> ByService {
    ByService::of(service)
}
