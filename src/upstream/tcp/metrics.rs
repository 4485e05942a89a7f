//! TCP passthrough's metrics, per direction and service: connections forwarded, open,
//! and given up (by why), and the bytes each way.
//!
//! A [`TcpSeries`] holds the handles of one service's series, looked up once per config,
//! so that a connection and its byte counting touch only atomics.

use std::sync::Arc;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;

use crate::core::labels::{Direction, ServiceLabel};

/// Labels of the TCP series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    /// Inbound (to the local app) or outbound (to a service).
    pub direction: Direction,
    /// The service, or `inbound` for the local app.
    pub service: ServiceLabel,
}

/// Why a client connection was closed without being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailedReason {
    /// No endpoint was ready to try.
    NoEndpoint,
    /// Every endpoint tried refused, timed out or failed its TLS handshake.
    Connect,
    /// The caller's identity is not in `inbound.allow`.
    Denied,
}

impl EncodeLabelValue for FailedReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::NoEndpoint => "no_endpoint",
            Self::Connect => "connect",
            Self::Denied => "denied",
        })
    }
}

/// Labels of the failed-connection counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpFailedLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The service.
    pub service: ServiceLabel,
    /// Why.
    pub reason: FailedReason,
}

/// The TCP metric families; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TcpMetrics {
    opened: Family<TcpLabels, Counter>,
    active: Family<TcpLabels, Gauge>,
    failed: Family<TcpFailedLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
}

impl TcpMetrics {
    /// Registers the `tcp_*` families in `registry`.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let metrics = Self::default();
        registry.register(
            "tcp_connections_opened",
            "TCP passthrough connections forwarded to an endpoint, by direction and service",
            metrics.opened.clone(),
        );
        registry.register(
            "tcp_connections_active",
            "TCP passthrough connections open now, by direction and service",
            metrics.active.clone(),
        );
        registry.register(
            "tcp_connections_failed",
            "TCP client connections closed without being forwarded, by direction, service and reason",
            metrics.failed.clone(),
        );
        registry.register(
            "tcp_received_bytes",
            "Bytes read from TCP passthrough clients and sent on to the endpoint",
            metrics.received.clone(),
        );
        registry.register(
            "tcp_sent_bytes",
            "Bytes read from the endpoint and sent back to TCP passthrough clients",
            metrics.sent.clone(),
        );
        metrics
    }

    /// The series of `service` in `direction`, created at 0.
    pub fn series(&self, direction: Direction, service: &Arc<str>) -> TcpSeries {
        let labels = TcpLabels {
            direction,
            service: ServiceLabel(service.clone()),
        };
        let failed = |reason| {
            let labels = TcpFailedLabels {
                direction,
                service: ServiceLabel(service.clone()),
                reason,
            };
            self.failed.get_or_create(&labels).clone()
        };
        TcpSeries {
            opened: self.opened.get_or_create(&labels).clone(),
            active: self.active.get_or_create(&labels).clone(),
            no_endpoint: failed(FailedReason::NoEndpoint),
            connect_failed: failed(FailedReason::Connect),
            denied: failed(FailedReason::Denied),
            bytes: ByteCounters {
                received: self.received.get_or_create(&labels).clone(),
                sent: self.sent.get_or_create(&labels).clone(),
            },
        }
    }
}

/// One service's TCP series in one direction.
#[derive(Debug, Clone, Default)]
pub struct TcpSeries {
    /// Connections forwarded.
    pub opened: Counter,
    /// Connections open now.
    pub active: Gauge,
    /// Given up: no endpoint ready.
    pub no_endpoint: Counter,
    /// Given up: every endpoint tried failed.
    pub connect_failed: Counter,
    /// Refused: the caller is not allowed.
    pub denied: Counter,
    /// Bytes each way.
    pub bytes: ByteCounters,
}

/// Bytes through one service's connections, counted as they pass.
#[derive(Debug, Clone, Default)]
pub struct ByteCounters {
    /// From clients, toward endpoints.
    pub received: Counter,
    /// From endpoints, back to clients.
    pub sent: Counter,
}
