//! `remora_upstream_connections{service, state}`: each service's upstream connections,
//! idle and active, counted when Prometheus scrapes.
//!
//! The pools are kept per endpoint (and TLS settings), not per service, and the request
//! path counts nothing for this gauge: at each scrape the collector walks the current
//! state's services, their endpoints and the pool of each ([`UpstreamClients::connections`]).
//! A service appears once one of its endpoints has a pool (its first call made one).
//!
//! NOTE: two services that share an endpoint address (with the same TLS settings) share
//! its pool; its connections count under both.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry as MetricsRegistry;

use super::state::State;
use crate::core::labels::ServiceLabel;
use crate::upstream::{ConnectionCount, UpstreamClients};

/// Where the collector finds the state current at a scrape: set once the sidecar holds
/// its state (empty before, and after the sidecar is gone).
pub type CurrentState = OnceLock<Box<dyn Fn() -> Option<Arc<State>> + Send + Sync>>;

/// Labels of the connection gauge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectionLabels {
    service: ServiceLabel,
    /// `idle` (in the pool, or an HTTP/2 connection without a stream) or `active`.
    state: &'static str,
}

/// Encodes `remora_upstream_connections` at each scrape.
pub struct UpstreamConnections {
    current: Arc<CurrentState>,
}

impl std::fmt::Debug for UpstreamConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnections")
            .finish_non_exhaustive()
    }
}

impl UpstreamConnections {
    /// Registers the collector in `registry`; the returned slot is for the sidecar to
    /// fill once it holds its state.
    pub fn register(registry: &mut MetricsRegistry) -> Arc<CurrentState> {
        let current = Arc::new(CurrentState::new());
        registry.register_collector(Box::new(Self {
            current: current.clone(),
        }));
        current
    }
}

/// Each service's connections, in the order of its name.
fn census(state: &State, clients: &UpstreamClients) -> Vec<(Arc<str>, ConnectionCount)> {
    let mut services: Vec<(Arc<str>, ConnectionCount)> = state
        .discovery
        .iter()
        .filter_map(|(name, discovered)| {
            let tls = discovered.tls.load();
            let mut total: Option<ConnectionCount> = None;
            for endpoint in discovered.endpoints.snapshot().iter() {
                if let Some(count) = clients.connections(endpoint.addr, tls.of(endpoint)) {
                    total
                        .get_or_insert_with(ConnectionCount::default)
                        .add(count);
                }
            }
            total.map(|total| (Arc::from(name.as_str()), total))
        })
        .collect();
    services.sort_by(|a, b| a.0.cmp(&b.0));
    services
}

impl Collector for UpstreamConnections {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(state) = self.current.get().and_then(|current| current()) else {
            return Ok(());
        };
        let services = census(&state, &state.clients);
        if services.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(
            "upstream_connections",
            "Upstream connections per service: idle (pooled, or HTTP/2 without a stream) or active",
            None,
            MetricType::Gauge,
        )?;
        for (service, count) in services {
            for (state, value) in [("idle", count.idle), ("active", count.active)] {
                let labels = ConnectionLabels {
                    service: ServiceLabel(service.clone()),
                    state,
                };
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                gauge.encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
