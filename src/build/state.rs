//! One config's whole snapshot, as requests use it: the route table, the inbound
//! target, every service's stacks, endpoint sets and discovery, the server settings.
//!
//! A reload builds a new [`State`] beside the running one; discovery of services whose
//! source did not change carries over (same endpoint sets, same watch).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::conn::auto;

use super::metrics::Metrics;
use super::pump::{Discovered, DiscoveryKey, Source};
use super::resolve::{BuildError, ServiceTls};
use super::route::{RouteTable, Target};
use super::stack::{StackBuilder, StackTarget};
use crate::config::{Config, FieldPath, InboundTlsMode, LimitsSection, MeshTlsSection};
use crate::core::clock::HyperTimer;
use crate::core::executor::ConnectionExecutor;
use crate::discovery::Registry;
use crate::policy::authorize::Authorization;
use crate::policy::{BreakerSource, ServiceStack, Stack};
use crate::tls::{Credentials, CredentialsWatcher, InboundTls, TrustDomain};
use crate::upstream::{EndpointTls, UpstreamClients};

/// What a request needs, built from one config.
#[derive(Debug)]
pub struct State {
    /// The config this state was built from.
    pub config: Arc<Config>,
    /// Outbound routing.
    pub routes: RouteTable,
    /// The local app, when an inbound listener is configured.
    pub inbound: Option<Arc<Target>>,
    /// HTTP server settings for new client connections.
    pub server: auto::Builder<ConnectionExecutor>,
    /// Every circuit breaker, for the admin listener.
    pub breakers: Vec<BreakerSource>,
    /// Each service's endpoints and their watch, by service name; shared with the next
    /// state when the service's source does not change.
    pub discovery: HashMap<String, Arc<Discovered>>,
    /// The sidecar's own certificate material, kept current with its files; shared with
    /// the next state when the `tls` section does not change.
    pub mesh: Option<Arc<Mesh>>,
    /// Whether the inbound listener terminates mutual TLS (`Off` without a mesh).
    pub inbound_tls: InboundTls,
    /// Who may call the local app; `None` when no allow list is written (every caller
    /// the inbound listener admits reaches the app).
    pub authorization: Option<Authorization>,
    /// The `protocol: tcp` services and the TCP inbound, for the TCP listeners.
    pub tcp: super::tcp::TcpTargets,
    /// The stateful policy layers (breakers, limiters, retry budgets, caps), taken back
    /// by the next state where its config leaves their policy alone.
    pub carry: super::carry::PolicyCarry,
    /// The upstream connection pools; the next state keeps them (and their warm
    /// connections) while the `upstream` section stays the same.
    pub clients: UpstreamClients,
}

/// The sidecar's identity in the mesh: its credentials and the watch on their files.
#[derive(Debug)]
pub struct Mesh {
    /// The section they were read from.
    section: MeshTlsSection,
    /// The certificate, key and bundle every handshake uses.
    pub credentials: Arc<Credentials>,
    /// The inbound listener's TLS server config, on `credentials` (built once per mesh:
    /// it reads the current material at each handshake).
    pub server_config: Arc<rustls::ServerConfig>,
    /// Re-reads the files when they change; stops when the last state using it goes.
    _watch: Option<CredentialsWatcher>,
}

impl Mesh {
    /// The previous state's mesh when its section is `section`, else the files read
    /// anew and watched.
    fn start(section: &MeshTlsSection, previous: Option<&State>) -> Result<Arc<Mesh>, BuildError> {
        if let Some(mesh) = previous
            .and_then(|state| state.mesh.as_ref())
            .filter(|mesh| mesh.section == *section)
        {
            return Ok(mesh.clone());
        }
        let credentials = crate::build::resolve::mesh_credentials(section)
            .map_err(|e| e.within(&FieldPath::root().key("tls")))?;
        let server = crate::tls::server_config(&credentials)
            .map_err(|e| BuildError::at(FieldPath::root().key("tls"), e))?;
        let watch = match crate::tls::watch(credentials.clone()) {
            Ok(watch) => Some(watch),
            Err(error) => {
                // Still served; a rotation needs a restart until the directory can be watched.
                tracing::warn!(%error, "certificate files are not watched for changes");
                None
            }
        };
        Ok(Arc::new(Mesh {
            section: section.clone(),
            credentials,
            server_config: Arc::new(server),
            _watch: watch,
        }))
    }

    /// The trust domain of the sidecar's current certificate.
    pub fn trust_domain(&self) -> Option<TrustDomain> {
        let material = self.credentials.current();
        material.identity().map(|id| id.trust_domain().clone())
    }
}

impl State {
    /// Builds routes, endpoint sets, clients and every service's stacks for `config`.
    /// Discovery of services whose source did not change since `previous` carries over
    /// (same endpoint sets, same watch). Fails when a policy or registry cannot be built
    /// (validation catches what it can locate).
    pub async fn build(
        config: Config,
        metrics: &Metrics,
        previous: Option<&State>,
    ) -> Result<State, BuildError> {
        let mesh = match &config.tls {
            Some(section) => Some(Mesh::start(section, previous)?),
            None => None,
        };
        let mut registries: HashMap<&str, Arc<dyn Registry>> = HashMap::new();
        for (name, registry) in &config.registries {
            let client = crate::build::resolve::registry(registry)
                .map_err(|e| e.within(&FieldPath::root().key("registries").key(name)))?;
            registries.insert(name, client);
        }
        let mut discovery = HashMap::new();
        let mut cores = Vec::new();
        let clients = match previous.filter(|p| p.config.upstream == config.upstream) {
            Some(previous) => previous.clients.clone(),
            None => UpstreamClients::with_metrics(
                crate::build::resolve::pool(&config.upstream),
                metrics.pools.clone(),
            ),
        };
        let builder = StackBuilder::new(&config.policies, &metrics.policy, clients.clone())
            .carrying(previous.map(|p| &p.carry));
        let mut probe_tls = Vec::new();
        for (name, service) in &config.services {
            let (source, lookup, registry) = match &service.discovery {
                Some(reference) => (
                    Source::Registry {
                        config: config
                            .registries
                            .get(&reference.registry)
                            .cloned()
                            .unwrap_or_default(),
                        name: reference.name.clone().unwrap_or_else(|| name.clone()),
                    },
                    reference.name.clone().unwrap_or_else(|| name.clone()),
                    registries.get(reference.registry.as_str()).cloned(),
                ),
                None => (
                    Source::listed(&service.endpoints, &config.resolver),
                    name.clone(),
                    None,
                ),
            };
            let key = DiscoveryKey {
                source,
                balancer: service.balancer.clone(),
                health_check: service.health_check.clone(),
                outlier: service.outlier_detection.clone(),
            };
            let tls = crate::build::resolve::endpoint_tls(
                &ServiceTls {
                    service: name,
                    section: service.tls.as_ref(),
                    discovery_name: &lookup,
                    discovered: service.discovery.is_some(),
                    endpoint_host: crate::build::resolve::sole_endpoint_host(&service.endpoints),
                },
                mesh.as_ref().map(|mesh| &mesh.credentials),
            )
            .map_err(|e| e.within(&FieldPath::root().key("services").key(name).key("tls")))?;
            let discovered =
                start_discovery(previous, name, key, &lookup, registry, &tls, metrics).await?;
            // A kept discovery's health checks follow this state's TLS once it is built.
            probe_tls.push((discovered.tls.clone(), tls.clone()));
            let mut target = StackTarget::service(
                Arc::from(name.as_str()),
                discovered.endpoints.clone(),
                service,
            );
            target.tls = tls;
            if let Some(outlier) = &discovered.outlier {
                target.observers.push(outlier.clone());
            }
            target.observers.push(Arc::new(
                metrics.endpoints.observer(Arc::from(name.as_str())),
            ));
            let core = builder.core(target)?;
            discovery.insert(name.clone(), discovered);
            cores.push((name, service, core));
        }
        let inbound_core = match &config.inbound {
            Some(inbound) => {
                let app = std::slice::from_ref(&inbound.app);
                let key = DiscoveryKey {
                    source: Source::listed(app, &config.resolver),
                    balancer: Default::default(),
                    health_check: None,
                    outlier: None,
                };
                let discovered = start_discovery(
                    previous,
                    INBOUND_APP,
                    key,
                    INBOUND_APP,
                    None,
                    &Default::default(),
                    metrics,
                )
                .await?;
                let target = StackTarget::inbound(
                    Arc::from(INBOUND_APP),
                    discovered.endpoints.clone(),
                    inbound,
                );
                discovery.insert(INBOUND_APP.to_string(), discovered);
                Some(builder.core(target)?)
            }
            None => None,
        };

        // A fallback's alternate is the other service's stack without its own fallback,
        // so fallbacks never chain (or loop).
        let alternates: HashMap<String, ServiceStack> = cores
            .iter()
            .map(|(name, _, core)| (name.to_string(), ServiceStack::new(core.default.clone())))
            .collect();
        let alternate = |name: &str| alternates.get(name).cloned();

        let mut breakers = Vec::new();
        let mut finished = Vec::with_capacity(cores.len());
        for (name, service, core) in cores {
            breakers.extend(core.breakers.iter().cloned());
            let endpoints = core.endpoints();
            let stacks = builder.finish(core, &alternate)?;
            finished.push((name, service, endpoints, stacks));
        }
        // A route's backend or mirror is another service's whole default stack (its
        // routes, and so their splits, are not: a split never leads to another).
        let defaults: HashMap<&str, Stack> = finished
            .iter()
            .map(|(name, _, _, stacks)| (name.as_str(), stacks.default.clone()))
            .collect();
        let mut routes = RouteTable::new();
        for (name, service, endpoints, mut stacks) in finished {
            let at = FieldPath::root().key("services").key(name).key("routes");
            for (i, route) in stacks.routes.iter_mut().enumerate() {
                let own = route.stack.clone();
                let backend = |wanted: &str| {
                    if wanted == name.as_str() {
                        Some(own.clone())
                    } else {
                        defaults.get(wanted).cloned()
                    }
                };
                route.action = crate::build::resolve::route_action(
                    name,
                    &service.routes[i],
                    &backend,
                    &metrics.mirror,
                )
                .map_err(|e| e.within(&at.index(i)))?;
            }
            let target = Target::new(Arc::from(name.as_str()), endpoints, stacks);
            // A TCP service takes no HTTP calls: only its own port reaches it.
            if !service.protocol.is_tcp() {
                routes.insert(Arc::new(target), &service.hosts, &service.path_prefixes);
            }
        }
        let inbound = match inbound_core {
            Some(core) => {
                breakers.extend(core.breakers.iter().cloned());
                let endpoints = core.endpoints();
                let stacks = builder.finish(core, &alternate)?;
                Some(Arc::new(Target::new(
                    Arc::from(INBOUND_APP),
                    endpoints,
                    stacks,
                )))
            }
            None => None,
        };
        let carry = builder.into_carry();
        let tcp = super::tcp::targets(&config, &discovery, mesh.as_ref(), metrics)?;
        let authorization = match (&config.inbound, &mesh) {
            (Some(inbound), Some(mesh)) => inbound_authorization(inbound, mesh)?,
            _ => None,
        };
        let inbound_tls = match (config.inbound_tls(), &mesh) {
            (InboundTlsMode::Strict, Some(_)) => InboundTls::Strict,
            (InboundTlsMode::Permissive, Some(_)) => InboundTls::Permissive,
            // Validation refuses a TLS mode without a mesh.
            _ => InboundTls::Off,
        };
        for (cell, tls) in probe_tls {
            cell.store(Arc::new(tls));
        }
        Ok(State {
            tcp,
            carry,
            clients,
            inbound_tls,
            authorization,
            server: server_builder(&config.limits),
            config: Arc::new(config),
            routes,
            inbound,
            breakers,
            discovery,
            mesh,
        })
    }
}

/// `inbound`'s allow lists, read against the mesh's trust domain.
fn inbound_authorization(
    inbound: &crate::config::InboundSection,
    mesh: &Mesh,
) -> Result<Option<Authorization>, BuildError> {
    let at = FieldPath::root().key("inbound");
    let Some(own) = mesh.trust_domain() else {
        if inbound.allow.is_none() && inbound.authorize.is_empty() {
            return Ok(None);
        }
        return Err(BuildError::at(
            at,
            "authorization needs the sidecar's certificate to carry a SPIFFE identity",
        ));
    };
    crate::build::resolve::authorization(inbound, &own).map_err(|e| e.within(&at))
}

/// The name under which the local app is known to discovery and metrics.
pub(super) const INBOUND_APP: &str = "inbound";

/// The discovery of `service` from `source`: the previous state's when the source is
/// unchanged, else a new watch.
async fn start_discovery(
    previous: Option<&State>,
    service: &str,
    key: DiscoveryKey,
    lookup: &str,
    registry: Option<Arc<dyn Registry>>,
    tls: &EndpointTls,
    metrics: &Metrics,
) -> Result<Arc<Discovered>, BuildError> {
    if let Some(found) = previous
        .and_then(|state| state.discovery.get(service))
        .filter(|found| found.key == key)
    {
        return Ok(found.clone());
    }
    let registry: Arc<dyn Registry> = match (key.source.listed_registry(lookup)?, registry) {
        (Some(listed), _) => listed,
        (None, Some(registry)) => registry,
        (None, None) => {
            let path = FieldPath::root().key("services").key(service);
            return Err(BuildError::at(path.key("discovery"), "unknown registry"));
        }
    };
    Discovered::start(
        service,
        lookup,
        key,
        registry.as_ref(),
        tls.clone(),
        metrics,
    )
    .await
    .map_err(|e| e.within(&FieldPath::root().key("services").key(service)))
}

/// The HTTP server settings every proxy listener uses, from `limits`.
pub fn server_builder(limits: &LimitsSection) -> auto::Builder<ConnectionExecutor> {
    // HTTP/2 streams run in their connection's task (`serve/listener.rs` wraps each
    // connection in a `ConnectionTask`), not in a task each.
    let mut builder = auto::Builder::new(ConnectionExecutor);
    builder
        .http1()
        .timer(HyperTimer::default())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true)
        .half_close(false);
    builder
        .http2()
        .timer(HyperTimer::default())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Fixed windows: see the note on the upstream clients' windows.
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(4 * 1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}
