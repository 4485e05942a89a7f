//! The balancer's metrics: whether each service is in panic mode, and how often it
//! entered it.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;

use crate::core::labels::ServiceLabel;

/// Labels of the balancer's series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BalancerLabels {
    /// The service whose endpoints are balanced.
    pub service: ServiceLabel,
}

/// The balancer's metric families; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct BalancerMetrics {
    panic: Family<BalancerLabels, Gauge>,
    panic_entered: Family<BalancerLabels, Counter>,
}

impl BalancerMetrics {
    /// Registers `balancer_panic` and `balancer_panic_entered` in `registry`.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let metrics = Self::default();
        registry.register(
            "balancer_panic",
            "1 while too few of a service's endpoints are ready and picks ignore readiness",
            metrics.panic.clone(),
        );
        registry.register(
            "balancer_panic_entered",
            "Times a service's balancer entered panic mode",
            metrics.panic_entered.clone(),
        );
        metrics
    }

    /// The series of `service`, created at 0.
    pub(crate) fn series(&self, service: &Arc<str>) -> (Gauge, Counter) {
        let labels = BalancerLabels {
            service: ServiceLabel(service.clone()),
        };
        (
            self.panic.get_or_create(&labels).clone(),
            self.panic_entered.get_or_create(&labels).clone(),
        )
    }
}
