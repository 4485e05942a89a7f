//! TCP passthrough targets, once per config: what a TCP listener needs to forward a
//! connection.
//!
//! A `protocol: tcp` service gets a [`TcpTarget`] over the endpoint set its discovery,
//! active health checks and outlier ejection keep current (the same [`Discovered`] an
//! HTTP service has), reached over its `tls` block or registry-advertised mutual TLS with
//! ALPN `remora-tcp`. `inbound.protocol: tcp` gets one to the local app, in plaintext,
//! and the mesh's TLS server config offering `remora-tcp` only, for the inbound listener
//! to terminate mutual TLS with.

use std::collections::HashMap;
use std::sync::Arc;

use super::metrics::Metrics;
use super::pump::Discovered;
use super::resolve::{self, BuildError, ServiceTls};
use super::state::{Mesh, INBOUND_APP};
use crate::config::{Config, FieldPath};
use crate::core::labels::Direction;
use crate::upstream::{EndpointObserver, TcpForward, TcpSeries};

/// What a TCP listener's connections are forwarded with.
#[derive(Debug)]
pub struct TcpTarget {
    /// The service, or `inbound` for the local app.
    pub service: Arc<str>,
    /// Picks an endpoint and connects to it.
    pub forward: TcpForward,
    /// The service's TCP metrics.
    pub series: TcpSeries,
}

/// Every TCP target of one config.
#[derive(Debug, Default)]
pub struct TcpTargets {
    services: HashMap<String, Arc<TcpTarget>>,
    inbound: Option<Arc<TcpTarget>>,
    /// The TLS server config of a TCP inbound listener: the mesh's, offering ALPN
    /// `remora-tcp` only. `None` without a mesh or a TCP inbound.
    pub inbound_tls: Option<Arc<rustls::ServerConfig>>,
}

impl TcpTargets {
    /// The target of `protocol: tcp` service `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<TcpTarget>> {
        self.services.get(name)
    }

    /// The local app, when `inbound.protocol` is `tcp`.
    pub fn inbound(&self) -> Option<&Arc<TcpTarget>> {
        self.inbound.as_ref()
    }
}

/// The TCP targets of `config`, over the endpoint sets of `discovery` (every service's
/// and the app's, as the state built them).
pub(super) fn targets(
    config: &Config,
    discovery: &HashMap<String, Arc<Discovered>>,
    mesh: Option<&Arc<Mesh>>,
    metrics: &Metrics,
) -> Result<TcpTargets, BuildError> {
    let mut targets = TcpTargets::default();
    let credentials = mesh.map(|mesh| &mesh.credentials);
    for (name, service) in &config.services {
        if !service.protocol.is_tcp() {
            continue;
        }
        let at = FieldPath::root().key("services").key(name);
        let Some(discovered) = discovery.get(name) else {
            continue;
        };
        let settings = resolve::tcp(service.tcp.as_ref(), &config.upstream, &config.limits)
            .map_err(|e| e.within(&at.key("tcp")))?;
        let lookup = service.discovery.as_ref().and_then(|d| d.name.as_deref());
        let service_tls = ServiceTls {
            service: name,
            section: service.tls.as_ref(),
            discovery_name: lookup.unwrap_or(name),
            discovered: service.discovery.is_some(),
            endpoint_host: resolve::sole_endpoint_host(&service.endpoints),
        };
        let tls = resolve::endpoint_tls(&service_tls, credentials)
            .map_err(|e| e.within(&at.key("tls")))?;
        let service: Arc<str> = Arc::from(name.as_str());
        let forward = TcpForward::new(service.clone(), discovered.endpoints.clone(), settings)
            .with_tls(tls)
            .with_observers(observers(discovered));
        let target = TcpTarget {
            series: metrics.tcp.series(Direction::Outbound, &service),
            service,
            forward,
        };
        targets.services.insert(name.clone(), Arc::new(target));
    }
    let Some(inbound) = config.inbound.as_ref().filter(|i| i.protocol.is_tcp()) else {
        return Ok(targets);
    };
    let Some(discovered) = discovery.get(INBOUND_APP) else {
        return Ok(targets);
    };
    let at = FieldPath::root().key("inbound").key("tcp");
    let settings = resolve::tcp(inbound.tcp.as_ref(), &config.upstream, &config.limits)
        .map_err(|e| e.within(&at))?;
    let service: Arc<str> = Arc::from(INBOUND_APP);
    let forward = TcpForward::new(service.clone(), discovered.endpoints.clone(), settings);
    targets.inbound = Some(Arc::new(TcpTarget {
        series: metrics.tcp.series(Direction::Inbound, &service),
        service,
        forward,
    }));
    targets.inbound_tls =
        mesh.map(|mesh| Arc::new(crate::tls::tcp_server_config(&mesh.server_config)));
    Ok(targets)
}

/// What is told of each connect attempt: outlier ejection, when configured.
fn observers(discovered: &Discovered) -> Vec<Arc<dyn EndpointObserver>> {
    discovered
        .outlier
        .iter()
        .map(|outlier| outlier.clone() as Arc<dyn EndpointObserver>)
        .collect()
}
