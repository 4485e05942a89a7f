//! The Prometheus registry and the metrics the request path records.
//!
//! Label values are cheap to build on the hot path: a direction enum, the service name as
//! a shared `Arc<str>`, the status code as a number. The request path does not even
//! build them per request: a [`ServiceMetrics`] held by each service's target caches
//! the handles of its latency histogram and of its request counters for the common
//! statuses, looked up in the families once per config.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Which way a request travels through the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From another service's sidecar to the local app.
    Inbound,
    /// From the local app to another service.
    Outbound,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// A service name as a label value, shared rather than copied per request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceLabel(pub Arc<str>);

impl EncodeLabelValue for ServiceLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// The `route` label of requests no configured route takes (and of those no service
/// takes).
pub const DEFAULT_ROUTE: &str = "default";

/// Labels of a metric counted per service and nothing else (shed calls, rate-limited
/// calls, retries, ejections, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ByService {
    /// The service.
    pub service: ServiceLabel,
}

impl ByService {
    /// The labels of `service`.
    pub fn of(service: &Arc<str>) -> Self {
        Self {
            service: ServiceLabel(service.clone()),
        }
    }
}

/// A family of `M` labelled by service only.
pub type PerService<M> = Family<ByService, M>;

/// Registers a new per-service family under `name` and returns it.
pub fn register_per_service<M>(registry: &mut Registry, name: &str, help: &str) -> PerService<M>
where
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let family = PerService::<M>::default();
    registry.register(name, help, family.clone());
    family
}

/// Labels of the request counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The service the request was for (`unknown` when no route matched).
    pub service: ServiceLabel,
    /// The HTTP status sent to the caller.
    pub status: u16,
}

/// Labels of the latency histogram.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The service the request was for.
    pub service: ServiceLabel,
}

/// Labels naming a listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `inbound`, `outbound`, `service:<name>`.
    pub listener: String,
}

/// Labels of config reload outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// Every metric remora exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<ServiceLabels, Histogram>,
    /// Connections open per listener.
    pub connections: Family<ListenerLabels, Gauge>,
    /// Connections refused at accept because the listener was at its cap.
    pub connections_rejected: Family<ListenerLabels, Counter>,
    /// Configuration reloads by outcome.
    pub reloads: Family<ReloadLabels, Counter>,
    /// Every resilience policy's metrics.
    pub policy: crate::policy::PolicyMetrics,
    /// Discovery updates and staleness.
    pub discovery: crate::discovery::pump::DiscoveryMetrics,
    /// Balancer panic mode.
    pub balancer: crate::balance::BalancerMetrics,
    /// Health checks and outlier ejection.
    pub health: crate::health::HealthMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("remora");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by direction, service and status",
            requests.clone(),
        );
        let duration = Family::<ServiceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by direction and service",
            duration.clone(),
        );
        let connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Client connections open, by listener",
            connections.clone(),
        );
        let connections_rejected = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_rejected",
            "Connections closed at accept because the listener was at max_connections",
            connections_rejected.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            reloads.clone(),
        );
        let policy = crate::policy::PolicyMetrics::register(&mut registry);
        let discovery = crate::discovery::pump::DiscoveryMetrics::register(&mut registry);
        let balancer = crate::balance::BalancerMetrics::register(&mut registry);
        let health = crate::health::HealthMetrics::register(&mut registry);
        Self {
            policy,
            discovery,
            balancer,
            health,
            registry,
            requests,
            duration,
            connections,
            connections_rejected,
            reloads,
        }
    }

    /// The registry, for modules that register their own metrics (`remora` prefix).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Records one answered request.
    pub fn record_request(
        &self,
        direction: Direction,
        service: &Arc<str>,
        status: u16,
        elapsed: Duration,
    ) {
        let service = ServiceLabel(service.clone());
        self.duration
            .get_or_create(&ServiceLabels {
                direction,
                service: service.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                direction,
                service,
                status,
            })
            .inc();
    }

    /// Records one answered request through `cache`, the handles of `service` in
    /// `direction` (filled on first use).
    pub fn record_request_cached(
        &self,
        cache: &ServiceMetrics,
        direction: Direction,
        service: &Arc<str>,
        status: u16,
        elapsed: Duration,
    ) {
        let handles = cache.handles.get_or_init(|| ServiceHandles {
            direction,
            duration: self
                .duration
                .get_or_create(&ServiceLabels {
                    direction,
                    service: ServiceLabel(service.clone()),
                })
                .clone(),
            by_status: Default::default(),
        });
        if handles.direction != direction {
            // A target serves one direction; never taken, but never wrong either.
            self.record_request(direction, service, status, elapsed);
            return;
        }
        handles.duration.observe(elapsed.as_secs_f64());
        let Some(slot) = common_status_slot(status) else {
            self.requests
                .get_or_create(&RequestLabels {
                    direction,
                    service: ServiceLabel(service.clone()),
                    status,
                })
                .inc();
            return;
        };
        handles.by_status[slot]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        direction,
                        service: ServiceLabel(service.clone()),
                        status,
                    })
                    .clone()
            })
            .inc();
    }

    /// The registry in Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# metrics encoding failed");
        }
        out
    }
}

/// The statuses whose request counters a [`ServiceMetrics`] caches.
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504, 101,
];

fn common_status_slot(status: u16) -> Option<usize> {
    COMMON_STATUSES.iter().position(|&common| common == status)
}

/// One service's metric handles, cached by its target for the life of one config so
/// the request path records without hashing labels. Empty until the first request;
/// the counters of a status appear in the registry only once it was answered (as with
/// the families themselves).
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    handles: OnceLock<ServiceHandles>,
}

#[derive(Debug)]
struct ServiceHandles {
    /// The direction the handles were made for.
    direction: Direction,
    duration: Histogram,
    /// Request counters of [`COMMON_STATUSES`], by index.
    by_status: [OnceLock<Counter>; COMMON_STATUSES.len()],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_handles_count_into_the_same_series() {
        let metrics = Metrics::new();
        let cache = ServiceMetrics::default();
        let name: Arc<str> = Arc::from("shop");
        for status in [200, 200, 418] {
            metrics.record_request_cached(
                &cache,
                Direction::Outbound,
                &name,
                status,
                Duration::from_millis(1),
            );
        }
        metrics.record_request(Direction::Outbound, &name, 200, Duration::from_millis(1));
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"remora_requests_total{direction="outbound",service="shop",status="200"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"remora_requests_total{direction="outbound",service="shop",status="418"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"remora_request_duration_seconds_count{direction="outbound",service="shop"} 4"#
            ),
            "{text}"
        );
        assert!(!text.contains(r#"status="404""#), "{text}");
    }
}
