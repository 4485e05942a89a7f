//! Where upstream endpoints come from, and how this sidecar announces its own app.
//!
//! A [`Registry`] turns a service name into a stream of full snapshots of its instances.
//! The sidecar pumps each snapshot into the service's [`EndpointSet`](crate::balance::EndpointSet);
//! the balancer never waits on a registry. A backend is one file implementing the trait:
//! `static` (the YAML's own list), `file`, `dns`, `etcd`, `consul`, `eureka`, `nacos`
//! and `zookeeper`; a YAML list with
//! `host:port` names among its addresses is [`NamedEndpoints`], each name watched
//! through the `dns` backend.
//!
//! A registry that can also hold entries (etcd, consul, eureka, nacos, zookeeper) implements
//! [`register`](Registry::register): the returned [`Registration`] keeps the entry's lease
//! or TTL check alive until it is deregistered or dropped.
//!
//! # Availability and staleness
//!
//! A registry outage never empties an endpoint set. Every backend follows one contract
//! for its watch stream:
//!
//! - Every `Ok` item is a full snapshot of the service; the consumer replaces its set.
//! - An `Err` item means "the registry cannot be read right now"; the consumer keeps the
//!   last snapshot. During an outage the stream yields one `Err` per failed attempt,
//!   and attempts are at most the backend's maximum backoff apart, so a consumer that
//!   saw no item for longer than that knows the watch itself is stuck.
//! - The first item after an outage is always an `Ok` snapshot, even when nothing
//!   changed, so the consumer learns that its endpoints are fresh again.
//! - Backends never turn a read failure into an empty snapshot. An empty `Ok` snapshot
//!   means the registry really holds no instance of the service.
//!
//! [`Freshness`] is the consumer's side of that contract: feed it every item and it says
//! whether the endpoints are stale and since when, for `/endpoints` and metrics.

mod backoff;
mod connect;
mod consul;
mod dns;
mod etcd;
mod eureka;
mod feed;
mod file;
mod freshness;
mod http;
mod metrics;
mod nacos;
mod names;
mod record;
mod registration;
pub mod self_registration;
mod r#static;
mod zookeeper;

pub use backoff::Backoff;
pub use connect::RegistryTls;
pub use consul::{ConsulConfig, ConsulRegistry};
pub use dns::{DnsConfig, DnsRefresh, DnsRegistry, DNS_NAME_METADATA};
pub use etcd::{EtcdConfig, EtcdRegistry};
pub use eureka::{EurekaConfig, EurekaRegistry};
pub use file::{FileConfig, FileRegistry};
pub use freshness::Freshness;
pub use metrics::{
    malformed_entries, DiscoveryLabels, DiscoveryMetrics, MalformedLabels, UpdateLabels,
};
pub use nacos::{NacosConfig, NacosRegistry};
pub use names::NamedEndpoints;
pub use r#static::StaticRegistry;
pub use record::InstanceRecord;
pub use registration::Registration;
pub use zookeeper::{ZookeeperConfig, ZookeeperPayload, ZookeeperRegistry};

// The parsers of registry answers, for the fuzz targets (`crate::fuzzing`).
pub(crate) use consul::parse_health as consul_health;
pub(crate) use eureka::apps as eureka_apps;
pub(crate) use file::instances as file_instances;
pub(crate) use nacos::parse_list as nacos_list;
pub(crate) use zookeeper::{curator_from_json, curator_to_json};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

/// The instance metadata key under which a sidecar that serves mutual TLS advertises its
/// SPIFFE ID. An underscore, not a dot: Consul's meta keys allow only `[A-Za-z0-9_-]`.
pub const MTLS_METADATA: &str = "remora_mtls";

/// One instance of a service as a registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Unique within the service: the key a registry stores the instance under.
    pub id: String,
    /// Where the instance listens.
    pub addr: SocketAddr,
    /// Relative share of traffic (1 unless the registry says otherwise).
    pub weight: u32,
    /// Free-form labels (`zone`, `version`, ...).
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    /// An instance with weight 1, no metadata, and its address as its id.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            id: addr.to_string(),
            addr,
            weight: 1,
            metadata: BTreeMap::new(),
        }
    }

    /// The same instance under another id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

/// A registry that could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("registry {registry}: {message}")]
pub struct DiscoveryError {
    /// Which backend failed.
    pub registry: &'static str,
    /// What went wrong.
    pub message: String,
}

impl DiscoveryError {
    /// An error of `registry` saying `message`.
    pub fn new(registry: &'static str, message: impl Into<String>) -> Self {
        Self {
            registry,
            message: message.into(),
        }
    }
}

/// A stream of full snapshots, or outages, of one service.
pub type Snapshots = BoxStream<'static, Result<Vec<Instance>, DiscoveryError>>;

/// A source of service instances.
pub trait Registry: Send + Sync + 'static {
    /// Full snapshots of `service`'s instances: the first as soon as it is known, then one
    /// on every change. An `Err` item reports an outage; the consumer keeps the last
    /// snapshot and the stream goes on when the registry returns (see the module docs
    /// for the exact contract).
    fn watch(&self, service: &str) -> BoxStream<'static, Result<Vec<Instance>, DiscoveryError>>;

    /// The name of the backend, for errors and logs.
    fn name(&self) -> &'static str {
        "unnamed"
    }

    /// Announces `instance` as part of `service` for as long as the returned
    /// [`Registration`] lives; the registry forgets it `ttl` after the keep-alive stops.
    fn register(
        &self,
        service: &str,
        instance: Instance,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<Registration, DiscoveryError>> {
        let _ = (service, instance, ttl);
        let registry = self.name();
        Box::pin(async move {
            Err(DiscoveryError::new(
                registry,
                format!("registry {registry} does not support registration"),
            ))
        })
    }
}
