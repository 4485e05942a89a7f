//! The rate limit's metric: calls refused, by service.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry as MetricsRegistry;

use crate::core::labels::{register_per_service, ByService, PerService};

/// Rate-limit metrics, shared by every service's layer.
#[derive(Debug, Clone)]
pub struct RateLimitMetrics {
    limited: PerService<Counter>,
}

impl RateLimitMetrics {
    /// Registers the rate-limit metrics.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        Self {
            limited: register_per_service(
                registry,
                "rate_limited",
                "Requests refused by a rate limit, by service",
            ),
        }
    }

    pub(super) fn limited(&self, service: &Arc<str>) -> Counter {
        self.limited.get_or_create(&ByService::of(service)).clone()
    }
}
