//! The `static` registry: endpoints written in the YAML, one snapshot that never changes.

use std::collections::HashMap;
use std::net::SocketAddr;

use futures_util::stream::{self, BoxStream, StreamExt};

use super::{DiscoveryError, Instance, Registry};

/// Endpoints listed in the configuration.
#[derive(Debug, Default, Clone)]
pub struct StaticRegistry {
    services: HashMap<String, Vec<Instance>>,
}

impl StaticRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `service`'s instances.
    pub fn insert(&mut self, service: &str, addrs: &[SocketAddr]) {
        let instances = addrs.iter().copied().map(Instance::new).collect();
        self.services.insert(service.to_string(), instances);
    }
}

impl Registry for StaticRegistry {
    fn name(&self) -> &'static str {
        "static"
    }

    fn watch(&self, service: &str) -> BoxStream<'static, Result<Vec<Instance>, DiscoveryError>> {
        let snapshot = self.services.get(service).cloned().unwrap_or_default();
        // One snapshot, then stay open: a static list never changes until a reload.
        stream::once(async move { Ok(snapshot) })
            .chain(stream::pending())
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn yields_the_configured_instances_once() {
        let mut registry = StaticRegistry::new();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        registry.insert("orders", &[addr]);
        let mut watch = registry.watch("orders");
        let first = watch.next().await.unwrap().unwrap();
        assert_eq!(first, vec![Instance::new(addr)]);
        let unknown = registry.watch("nope").next().await.unwrap().unwrap();
        assert!(unknown.is_empty());
    }
}
