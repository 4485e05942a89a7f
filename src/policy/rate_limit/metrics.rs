//! The rate limit's metrics: calls refused, by service; and for shared limits, the
//! Redis calls that failed and whether the limit is answering without Redis.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;

use crate::core::labels::{register_per_service, ByService, PerService, ServiceLabel};

/// Names one shared limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SharedLimitLabels {
    /// The service limited.
    pub service: ServiceLabel,
    /// The limit's name under `policies.rate_limits`.
    pub limit: String,
}

/// Labels of the shared limit's error counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SharedErrorLabels {
    /// The service limited.
    pub service: ServiceLabel,
    /// The limit's name under `policies.rate_limits`.
    pub limit: String,
    /// `timeout` (no answer within the deadline) or `redis` (an error answer or a
    /// broken connection).
    pub reason: &'static str,
}

/// Rate-limit metrics, shared by every service's layer.
#[derive(Debug, Clone)]
pub struct RateLimitMetrics {
    limited: PerService<Counter>,
    shared_errors: Family<SharedErrorLabels, Counter>,
    shared_degraded: Family<SharedLimitLabels, Gauge>,
}

/// One shared limit's handles on its metrics, resolved once.
#[derive(Debug, Clone)]
pub(super) struct SharedLimitMetrics {
    pub(super) timeouts: Counter,
    pub(super) errors: Counter,
    /// 1 while the limit answers without Redis.
    pub(super) degraded: Gauge,
}

impl RateLimitMetrics {
    /// Registers the rate-limit metrics.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let shared_errors = Family::default();
        registry.register(
            "rate_limit_shared_errors",
            "Redis calls of a shared rate limit that failed, by service, limit and reason \
             (timeout, redis)",
            shared_errors.clone(),
        );
        let shared_degraded = Family::default();
        registry.register(
            "rate_limit_shared_degraded",
            "1 while a shared rate limit answers without Redis (its on_error), by service \
             and limit",
            shared_degraded.clone(),
        );
        Self {
            limited: register_per_service(
                registry,
                "rate_limited",
                "Requests refused by a rate limit, by service",
            ),
            shared_errors,
            shared_degraded,
        }
    }

    pub(super) fn limited(&self, service: &Arc<str>) -> Counter {
        self.limited.get_or_create(&ByService::of(service)).clone()
    }

    pub(super) fn shared(&self, service: &Arc<str>, limit: &str) -> SharedLimitMetrics {
        let error = |reason| {
            self.shared_errors
                .get_or_create(&SharedErrorLabels {
                    service: ServiceLabel(service.clone()),
                    limit: limit.to_string(),
                    reason,
                })
                .clone()
        };
        let degraded = self
            .shared_degraded
            .get_or_create(&SharedLimitLabels {
                service: ServiceLabel(service.clone()),
                limit: limit.to_string(),
            })
            .clone();
        degraded.set(0);
        SharedLimitMetrics {
            timeouts: error("timeout"),
            errors: error("redis"),
            degraded,
        }
    }
}
