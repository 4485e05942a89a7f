//! The Prometheus registry and the metrics the request path records.
//!
//! The request path does not build label values per request: a [`ServiceMetrics`] held
//! by each service's target caches the handle of its latency histogram, and a
//! [`RouteMetrics`] held by each of its routes caches its request counters for the
//! common statuses and for every gRPC code and its body byte counters, looked up in the
//! families once per config.
//! Every mechanism registers its own metrics here, once per process.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as MetricsRegistry;

use crate::core::labels::{
    Classification, Direction, GrpcCode, RouteLabel, ServiceLabel, DEFAULT_ROUTE,
};

/// Labels of the request counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The service the request was for (`unknown` when no route matched).
    pub service: ServiceLabel,
    /// The service's route that took it ([`DEFAULT_ROUTE`] when none did).
    pub route: RouteLabel,
    /// The HTTP status sent to the caller.
    pub status: u16,
    /// The gRPC status sent to the caller (empty for answers that are not gRPC).
    pub grpc_code: GrpcCode,
    /// Success or failure, gRPC status counted ([`Classification`]).
    pub classification: Classification,
}

/// Labels of the latency histogram.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The service the request was for.
    pub service: ServiceLabel,
}

/// Labels of the body byte counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The service the request was for.
    pub service: ServiceLabel,
    /// The service's route that took it ([`DEFAULT_ROUTE`] when none did).
    pub route: RouteLabel,
}

/// The body byte counters of one route: what its callers sent, what they got back.
#[derive(Debug, Clone)]
pub struct BodyBytes {
    /// `remora_request_bytes_total`: request body bytes read from callers.
    pub request: Counter,
    /// `remora_response_bytes_total`: response body bytes sent back to them.
    pub response: Counter,
}

/// Labels naming a listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `inbound`, `outbound`, `service:<name>`.
    pub listener: String,
}

/// Labels of inbound calls refused by authorization.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeniedLabels {
    /// The listener (`inbound`).
    pub listener: &'static str,
    /// The caller's SPIFFE ID, or `unauthenticated` for a plaintext caller. Bounded by
    /// the identities of the trust domain: the handshake admits no other.
    pub caller: String,
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
    registry: MetricsRegistry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<ServiceLabels, Histogram>,
    request_bytes: Family<RouteLabels, Counter>,
    response_bytes: Family<RouteLabels, Counter>,
    /// Connections open per listener.
    pub connections: Family<ListenerLabels, Gauge>,
    /// Connections refused at accept because the listener was at its cap.
    pub connections_rejected: Family<ListenerLabels, Counter>,
    /// Configuration reloads by outcome.
    pub reloads: Family<ReloadLabels, Counter>,
    /// TLS handshakes that failed (or timed out) per listener: the peer never reached
    /// the app.
    pub tls_handshake_failures: Family<ListenerLabels, Counter>,
    /// Calls refused by inbound authorization, by caller.
    pub requests_denied: Family<DeniedLabels, Counter>,
    /// Every resilience policy's metrics.
    pub policy: crate::policy::PolicyMetrics,
    /// Discovery updates and staleness.
    pub discovery: crate::discovery::DiscoveryMetrics,
    /// Balancer panic mode.
    pub balancer: crate::balance::BalancerMetrics,
    /// Health checks and outlier ejection.
    pub health: crate::health::HealthMetrics,
    /// TCP passthrough connections and bytes.
    pub tcp: crate::upstream::TcpMetrics,
    /// Tries and latency per endpoint.
    pub endpoints: crate::upstream::EndpointMetrics,
    /// Calls waiting for an upstream connection, refused or timed out there.
    pub pools: crate::upstream::PoolMetrics,
    /// Copies sent to mirrors, and those dropped.
    pub mirror: crate::routing::MirrorMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = MetricsRegistry::with_prefix("remora");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by direction, service, route, status and gRPC code",
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
        let request_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "request_bytes",
            "Request body bytes read from callers as they streamed, by direction, service and route",
            request_bytes.clone(),
        );
        let response_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "response_bytes",
            "Response body bytes sent back to callers as they streamed, by direction, service and route",
            response_bytes.clone(),
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
        let tls_handshake_failures = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes refused, failed or timed out, by listener",
            tls_handshake_failures.clone(),
        );
        let requests_denied = Family::<DeniedLabels, Counter>::default();
        registry.register(
            "requests_denied",
            "Inbound calls refused by authorization, by listener and caller",
            requests_denied.clone(),
        );
        let policy = crate::policy::PolicyMetrics::register(&mut registry);
        let discovery = crate::discovery::DiscoveryMetrics::register(&mut registry);
        let balancer = crate::balance::BalancerMetrics::register(&mut registry);
        let health = crate::health::HealthMetrics::register(&mut registry);
        let tcp = crate::upstream::TcpMetrics::register(&mut registry);
        let endpoints = crate::upstream::EndpointMetrics::register(&mut registry);
        let pools = crate::upstream::PoolMetrics::register(&mut registry);
        let mirror = crate::routing::MirrorMetrics::register(&mut registry);
        registry.register_collector(Box::new(DroppedLogLines));
        registry.register_collector(Box::new(super::process_metrics::ProcessMetrics));
        registry.register(
            "build",
            "The remora build answering: its version and the target it was built for",
            prometheus_client::metrics::info::Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("target_arch", std::env::consts::ARCH),
                ("target_os", std::env::consts::OS),
            ]),
        );
        Self {
            tcp,
            endpoints,
            pools,
            mirror,
            policy,
            discovery,
            balancer,
            health,
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            connections,
            connections_rejected,
            reloads,
            tls_handshake_failures,
            requests_denied,
        }
    }

    /// The registry, for modules that register their own metrics (`remora` prefix).
    pub fn registry_mut(&mut self) -> &mut MetricsRegistry {
        &mut self.registry
    }

    /// Records one answered request of `service` that no route took, looking its series
    /// up (requests no service takes, and the rare combinations no cache holds).
    pub fn record_request(
        &self,
        direction: Direction,
        service: &Arc<str>,
        status: u16,
        grpc_code: GrpcCode,
        elapsed: Duration,
    ) {
        self.duration
            .get_or_create(&ServiceLabels {
                direction,
                service: ServiceLabel(service.clone()),
            })
            .observe(elapsed.as_secs_f64());
        let route = RouteLabel(Arc::from(DEFAULT_ROUTE));
        self.count(direction, service, route, status, grpc_code);
    }

    /// Records one answered request of `series`: its time to response headers and its
    /// count, through the series' cached handles.
    pub fn record_request_cached(
        &self,
        series: &Series<'_>,
        status: u16,
        grpc_code: GrpcCode,
        elapsed: Duration,
    ) {
        self.observe_duration(series, elapsed);
        self.count_request(series, status, grpc_code);
    }

    /// Records the time to response headers of one request of `series`.
    pub fn observe_duration(&self, series: &Series<'_>, elapsed: Duration) {
        let handles = self.handles(series);
        if handles.direction != series.direction {
            // A target serves one direction; never taken, but never wrong either.
            self.duration
                .get_or_create(&ServiceLabels {
                    direction: series.direction,
                    service: ServiceLabel(series.service.clone()),
                })
                .observe(elapsed.as_secs_f64());
            return;
        }
        handles.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one answered request of `series` (its answer's gRPC status may come
    /// after its headers, so this is separate from [`observe_duration`](Self::observe_duration)).
    pub fn count_request(&self, series: &Series<'_>, status: u16, grpc_code: GrpcCode) {
        let route = series.route;
        let slot = match grpc_code {
            GrpcCode::NotGrpc => common_status_slot(status).map(|i| &route.by_status[i]),
            GrpcCode::Code(code) if status == 200 => route.by_grpc_code.get(usize::from(code)),
            _ => None,
        };
        let cached = self.handles(series).direction == series.direction;
        let Some(slot) = slot.filter(|_| cached) else {
            let label = RouteLabel(route.label.clone());
            self.count(series.direction, series.service, label, status, grpc_code);
            return;
        };
        slot.get_or_init(|| {
            self.requests
                .get_or_create(&RequestLabels {
                    direction: series.direction,
                    service: ServiceLabel(series.service.clone()),
                    route: RouteLabel(route.label.clone()),
                    status,
                    grpc_code,
                    classification: Classification::of(status, grpc_code),
                })
                .clone()
        })
        .inc();
    }

    /// The body byte counters of `series`, through its route's cache.
    pub fn body_bytes(&self, series: &Series<'_>) -> BodyBytes {
        if self.handles(series).direction != series.direction {
            // As in `observe_duration`: never taken, but never wrong either.
            return self.look_up_body_bytes(series);
        }
        series
            .route
            .bytes
            .get_or_init(|| self.look_up_body_bytes(series))
            .clone()
    }

    fn look_up_body_bytes(&self, series: &Series<'_>) -> BodyBytes {
        let labels = RouteLabels {
            direction: series.direction,
            service: ServiceLabel(series.service.clone()),
            route: RouteLabel(series.route.label.clone()),
        };
        BodyBytes {
            request: self.request_bytes.get_or_create(&labels).clone(),
            response: self.response_bytes.get_or_create(&labels).clone(),
        }
    }

    /// The service's cached handles, made for the direction of its first request.
    fn handles<'s>(&self, series: &Series<'s>) -> &'s ServiceHandles {
        series.cache.handles.get_or_init(|| ServiceHandles {
            direction: series.direction,
            duration: self
                .duration
                .get_or_create(&ServiceLabels {
                    direction: series.direction,
                    service: ServiceLabel(series.service.clone()),
                })
                .clone(),
        })
    }

    /// Counts one request, looking its series up.
    fn count(
        &self,
        direction: Direction,
        service: &Arc<str>,
        route: RouteLabel,
        status: u16,
        grpc_code: GrpcCode,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                direction,
                service: ServiceLabel(service.clone()),
                route,
                status,
                grpc_code,
                classification: Classification::of(status, grpc_code),
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

/// `remora_log_lines_dropped_total`: log lines the writer's queue had no room for, read
/// from the process-wide writer when the metrics are encoded.
#[derive(Debug)]
struct DroppedLogLines;

impl prometheus_client::collector::Collector for DroppedLogLines {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let counter =
            prometheus_client::metrics::counter::ConstCounter::new(crate::access::dropped_lines());
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines (access log included) dropped because the writer's queue was full",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// The statuses whose request counters a [`ServiceMetrics`] caches.
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504, 101,
];

fn common_status_slot(status: u16) -> Option<usize> {
    COMMON_STATUSES.iter().position(|&common| common == status)
}

/// Where one request counts: its direction, its service and the route that took it,
/// with the handle caches of both.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The service's name.
    pub service: &'a Arc<str>,
    /// The service's cached latency handle.
    pub cache: &'a ServiceMetrics,
    /// The route's label and cached counters.
    pub route: &'a RouteMetrics,
}

/// One service's latency handle, cached by its target for the life of one config so the
/// request path records without hashing labels. Empty until the first request.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    handles: OnceLock<ServiceHandles>,
}

#[derive(Debug)]
struct ServiceHandles {
    /// The direction the handles (and the route counters) were made for.
    direction: Direction,
    duration: Histogram,
}

/// One route's label and request counters (a service's requests no route takes form a
/// route too, [`DEFAULT_ROUTE`]), cached for the life of one config. A counter appears in
/// the registry only once its combination was answered (as with the families themselves).
#[derive(Debug)]
pub struct RouteMetrics {
    /// The `route` label, as configured.
    label: Arc<str>,
    /// Counters of answers that are not gRPC, by index in [`COMMON_STATUSES`].
    by_status: [OnceLock<Counter>; COMMON_STATUSES.len()],
    /// Counters of HTTP 200 gRPC answers, by gRPC code.
    by_grpc_code: [OnceLock<Counter>; GrpcCode::MAX as usize + 1],
    /// Its body byte counters.
    bytes: OnceLock<BodyBytes>,
}

impl RouteMetrics {
    /// The (empty) counters of the route labelled `label`.
    pub fn new(label: Arc<str>) -> Self {
        Self {
            label,
            by_status: Default::default(),
            by_grpc_code: Default::default(),
            bytes: OnceLock::new(),
        }
    }

    /// The `route` label.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_handles_count_into_the_same_series() {
        let metrics = Metrics::new();
        let cache = ServiceMetrics::default();
        let name: Arc<str> = Arc::from("shop");
        let default = RouteMetrics::new(Arc::from(DEFAULT_ROUTE));
        let series = Series {
            direction: Direction::Outbound,
            service: &name,
            cache: &cache,
            route: &default,
        };
        for status in [200, 200, 418] {
            metrics.record_request_cached(
                &series,
                status,
                GrpcCode::NotGrpc,
                Duration::from_millis(1),
            );
        }
        metrics.record_request(
            Direction::Outbound,
            &name,
            200,
            GrpcCode::NotGrpc,
            Duration::from_millis(1),
        );
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"remora_requests_total{direction="outbound",service="shop",route="default",status="200",grpc_code="",classification="success"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"remora_requests_total{direction="outbound",service="shop",route="default",status="418",grpc_code="",classification="success"} 1"#
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

    #[test]
    fn body_bytes_count_per_route_through_the_cache() {
        let metrics = Metrics::new();
        let cache = ServiceMetrics::default();
        let name: Arc<str> = Arc::from("shop");
        let route = RouteMetrics::new(Arc::from("quotes"));
        let series = Series {
            direction: Direction::Outbound,
            service: &name,
            cache: &cache,
            route: &route,
        };
        for (up, down) in [(10, 300), (5, 0)] {
            let bytes = metrics.body_bytes(&series);
            bytes.request.inc_by(up);
            bytes.response.inc_by(down);
        }
        let text = metrics.encode();
        let labels = r#"{direction="outbound",service="shop",route="quotes"}"#;
        for (name, value) in [("request", 15), ("response", 300)] {
            let sample = format!("remora_{name}_bytes_total{labels} {value}\n");
            assert!(text.contains(&sample), "{sample} in {text}");
        }
    }

    #[test]
    fn grpc_codes_count_per_route_and_stay_bounded() {
        let metrics = Metrics::new();
        let cache = ServiceMetrics::default();
        let name: Arc<str> = Arc::from("shop");
        let route = RouteMetrics::new(Arc::from("quotes"));
        let series = Series {
            direction: Direction::Inbound,
            service: &name,
            cache: &cache,
            route: &route,
        };
        for (status, code) in [
            (200, Some(5)),
            (200, Some(5)),
            (200, Some(0)),
            (503, Some(14)),
        ] {
            metrics.count_request(&series, status, GrpcCode::of(code));
        }
        for code in [None, Some(17), Some(u32::MAX)] {
            metrics.count_request(&series, 200, GrpcCode::of(code));
        }
        let text = metrics.encode();
        let line = |status: u16, code: &str, class: &str| {
            format!(
                r#"remora_requests_total{{direction="inbound",service="shop",route="quotes",status="{status}",grpc_code="{code}",classification="{class}"}}"#
            )
        };
        for (series, count) in [
            (line(200, "5", "failure"), 2),
            (line(200, "0", "success"), 1),
            (line(503, "14", "failure"), 1),
            (line(200, "unknown", "failure"), 3),
        ] {
            assert!(
                text.contains(&format!("{series} {count}\n")),
                "{series} {count} in {text}"
            );
        }
    }
}
