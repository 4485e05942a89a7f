//! Per-endpoint request counts and latency: which replica answers what, how fast.
//!
//! An [`EndpointStats`] observer per service sees every try's outcome at response
//! headers. It keeps the handles of each endpoint's series, so a try costs a read lock,
//! a hash lookup and the counter and histogram updates, no label formatting. The series
//! are bounded: at most [`MAX_ENDPOINTS`] endpoints per service get their own, the rest
//! count under `endpoint="other"`.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use http::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as MetricsRegistry;

use super::EndpointObserver;
use crate::balance::Endpoint;
use crate::core::addr_map::AddrMap;
use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;
use crate::core::labels::ServiceLabel;

/// Endpoints per service with series of their own.
pub const MAX_ENDPOINTS: usize = 256;

/// Labels of one endpoint's latency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The service the endpoint serves.
    pub service: ServiceLabel,
    /// `ip:port`, or `other` past [`MAX_ENDPOINTS`].
    pub endpoint: String,
}

/// Labels of one endpoint's tries by outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointOutcomeLabels {
    /// The service the endpoint serves.
    pub service: ServiceLabel,
    /// `ip:port`, or `other`.
    pub endpoint: String,
    /// `1xx` .. `5xx` for an answer, else why the try got none (`connect-failure`,
    /// `upstream-reset`, `timeout`, ...).
    pub outcome: &'static str,
}

/// The per-endpoint families, registered once per process.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    tries: Family<EndpointOutcomeLabels, Counter>,
    duration: Family<EndpointLabels, Histogram>,
}

impl EndpointMetrics {
    /// Registers `remora_endpoint_requests_total` and
    /// `remora_endpoint_request_duration_seconds`.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let tries = Family::default();
        registry.register(
            "endpoint_requests",
            "Tries sent to each endpoint, by outcome (status class, or why no answer came)",
            tries.clone(),
        );
        let duration = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "endpoint_request_duration_seconds",
            "Time from a try's request to its response headers, by endpoint",
            duration.clone(),
        );
        Self { tries, duration }
    }

    /// The observer of `service`'s endpoints.
    pub fn observer(&self, service: Arc<str>) -> EndpointStats {
        EndpointStats {
            service: ServiceLabel(service),
            metrics: self.clone(),
            handles: RwLock::new(AddrMap::default()),
        }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The series handles of one endpoint.
#[derive(Debug)]
struct Handles {
    /// Answers by status class.
    classes: [Counter; 5],
    duration: Histogram,
    endpoint: String,
}

/// Counts the tries of one service's endpoints (an [`EndpointObserver`]).
#[derive(Debug)]
pub struct EndpointStats {
    service: ServiceLabel,
    metrics: EndpointMetrics,
    handles: RwLock<AddrMap<SocketAddr, Arc<Handles>>>,
}

impl EndpointStats {
    fn handles(&self, addr: SocketAddr) -> Arc<Handles> {
        let known = self.handles.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(handles) = known.get(&addr) {
            return handles.clone();
        }
        let count = known.len();
        drop(known);
        let endpoint = if count < MAX_ENDPOINTS {
            addr.to_string()
        } else {
            "other".to_string()
        };
        let labels = |outcome| EndpointOutcomeLabels {
            service: self.service.clone(),
            endpoint: endpoint.clone(),
            outcome,
        };
        let handles = Arc::new(Handles {
            classes: CLASSES.map(|class| self.metrics.tries.get_or_create(&labels(class)).clone()),
            duration: self
                .metrics
                .duration
                .get_or_create(&EndpointLabels {
                    service: self.service.clone(),
                    endpoint: endpoint.clone(),
                })
                .clone(),
            endpoint,
        });
        let mut known = self.handles.write().unwrap_or_else(PoisonError::into_inner);
        if known.len() < MAX_ENDPOINTS {
            known.insert(addr, handles.clone());
        }
        handles
    }
}

impl EndpointObserver for EndpointStats {
    fn observe(
        &self,
        endpoint: &Endpoint,
        result: &Result<Response<ProxyBody>, ProxyError>,
        elapsed: Duration,
    ) {
        // The common case: the endpoint's handles exist; used under the read lock, no
        // reference count touched.
        let known = self.handles.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(handles) = known.get(&endpoint.addr) {
            return self.record(handles, result, elapsed);
        }
        drop(known);
        let handles = self.handles(endpoint.addr);
        self.record(&handles, result, elapsed);
    }
}

impl EndpointStats {
    fn record(
        &self,
        handles: &Handles,
        result: &Result<Response<ProxyBody>, ProxyError>,
        elapsed: Duration,
    ) {
        match result {
            Ok(response) => {
                let class = usize::from(response.status().as_u16() / 100);
                if let Some(counter) = class.checked_sub(1).and_then(|i| handles.classes.get(i)) {
                    counter.inc();
                }
                handles.duration.observe(elapsed.as_secs_f64());
            }
            Err(error) => {
                self.metrics
                    .tries
                    .get_or_create(&EndpointOutcomeLabels {
                        service: self.service.clone(),
                        endpoint: handles.endpoint.clone(),
                        outcome: error.reason(),
                    })
                    .inc();
            }
        }
    }
}
