//! Discovery's metrics: updates applied or failed, staleness and endpoint counts.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;

/// Labels of discovery metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DiscoveryLabels {
    /// The service.
    pub service: String,
}

/// Labels of discovery updates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpdateLabels {
    /// The service.
    pub service: String,
    /// `ok` (a snapshot) or `error` (the registry failed; the last snapshot stays).
    pub result: &'static str,
}

/// Labels of entries a registry held that remora could not use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MalformedLabels {
    /// The backend (`eureka`, `nacos`, `zookeeper`).
    pub registry: &'static str,
    /// The service looked up.
    pub service: String,
}

/// Entries ignored because they could not be read, by backend and service.
///
/// NOTE: process-wide, because a registry client is built from its YAML section alone
/// (the build floor hands it no metrics) and outlives reloads; every [`DiscoveryMetrics`]
/// registers this same family.
pub fn malformed_entries() -> &'static Family<MalformedLabels, Counter> {
    static FAMILY: OnceLock<Family<MalformedLabels, Counter>> = OnceLock::new();
    FAMILY.get_or_init(Family::default)
}

/// Counts one ignored entry of `service` in `registry`.
pub(crate) fn count_malformed(registry: &'static str, service: &str) {
    malformed_entries()
        .get_or_create(&MalformedLabels {
            registry,
            service: service.to_string(),
        })
        .inc();
}

/// Discovery metrics.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryMetrics {
    /// Registry items received, by service and result.
    pub updates: Family<UpdateLabels, Counter>,
    /// 1 while a service's endpoints are stale.
    pub stale: Family<DiscoveryLabels, Gauge>,
    /// Endpoints known per service.
    pub endpoints: Family<DiscoveryLabels, Gauge>,
}

impl DiscoveryMetrics {
    /// Registers the discovery metrics.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let metrics = Self::default();
        registry.register(
            "discovery_updates",
            "MetricsRegistry items received, by service and result",
            metrics.updates.clone(),
        );
        registry.register(
            "discovery_stale",
            "1 while a service's endpoints are stale (its registry is failing), else 0",
            metrics.stale.clone(),
        );
        registry.register(
            "discovery_endpoints",
            "Endpoints in a service's current snapshot",
            metrics.endpoints.clone(),
        );
        registry.register(
            "discovery_malformed_entries",
            "Registry entries ignored because they could not be read, by backend and service",
            malformed_entries().clone(),
        );
        metrics
    }
}
