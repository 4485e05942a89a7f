//! Where upstream endpoints come from.
//!
//! A [`Registry`] turns a service name into a stream of full snapshots of its instances.
//! The sidecar pumps each snapshot into the service's [`EndpointSet`](crate::balance::EndpointSet);
//! the balancer never waits on a registry. A backend is one file implementing the trait.

mod r#static;

pub use r#static::StaticRegistry;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use futures_util::stream::BoxStream;

/// One instance of a service as a registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Where the instance listens.
    pub addr: SocketAddr,
    /// Relative share of traffic (1 unless the registry says otherwise).
    pub weight: u32,
    /// Free-form labels (zone, version, ...).
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    /// An instance with weight 1 and no metadata.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1,
            metadata: BTreeMap::new(),
        }
    }
}

/// A registry that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("registry {registry}: {message}")]
pub struct DiscoveryError {
    /// Which backend failed.
    pub registry: &'static str,
    /// What went wrong.
    pub message: String,
}

/// A source of service instances.
pub trait Registry: Send + Sync + 'static {
    /// Full snapshots of `service`'s instances: the first as soon as it is known, then one
    /// on every change. An `Err` item reports an outage; the consumer keeps the last
    /// snapshot and the stream goes on when the registry returns.
    fn watch(&self, service: &str) -> BoxStream<'static, Result<Vec<Instance>, DiscoveryError>>;
}
