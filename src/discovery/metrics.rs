//! Discovery's metrics: updates applied or failed, staleness and endpoint counts.

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
        metrics
    }
}
