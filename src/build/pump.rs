//! The consumer side of discovery: one task per service pumps a registry's snapshots
//! into the service's [`EndpointSet`], tracking freshness.
//!
//! A registry outage never empties the set: an `Err` item leaves the last snapshot
//! serving and marks it stale (availability over consistency, as a proxy should choose;
//! see docs/discovery.md). A [`Discovered`] outlives config reloads whose discovery
//! settings for the service did not change, so endpoints, their latency estimates and
//! breaker flags survive a reload, and a reload during an outage loses nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::resolve::{self, BuildError};
use crate::balance::EndpointSet;
use crate::config::{Destination, FieldPath, RegistrySection, ResolverSection};
use crate::discovery::{
    DiscoveryError, DiscoveryLabels, DnsRegistry, Freshness, Instance, NamedEndpoints, Registry,
    StaticRegistry, UpdateLabels,
};
use crate::upstream::EndpointTls;

/// Everything that shapes a service's endpoint set: equal keys share one
/// [`Discovered`] across reloads.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryKey {
    /// Where the endpoints come from.
    pub source: Source,
    /// How calls are spread over them.
    pub balancer: crate::config::BalancerSection,
    /// Active health checks.
    pub health_check: Option<crate::config::HealthCheckSection>,
    /// Passive outlier ejection.
    pub outlier: Option<crate::config::OutlierSection>,
}

/// Where a service's endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A list of addresses in the config.
    Static(Vec<SocketAddr>),
    /// A list in the config with `host:port` names among its entries.
    Named {
        /// The list as written.
        endpoints: Vec<Destination>,
        /// How its names are resolved (a change restarts their watches).
        resolver: ResolverSection,
    },
    /// A registry, looked up under `name`.
    Registry {
        /// The registry's settings.
        config: RegistrySection,
        /// The name looked up.
        name: String,
    },
}

impl Source {
    /// The source of a list written in the config: with names, they are resolved
    /// through DNS; a list of addresses alone needs no resolver.
    pub fn listed(endpoints: &[Destination], resolver: &ResolverSection) -> Source {
        match endpoints
            .iter()
            .map(Destination::addr)
            .collect::<Option<Vec<_>>>()
        {
            Some(addrs) => Self::Static(addrs),
            None => Self::Named {
                endpoints: endpoints.to_vec(),
                resolver: resolver.clone(),
            },
        }
    }

    /// The registry a listed source reads from, `None` for a registry source (the
    /// state's registries hold those). `lookup` is the name it is watched under.
    pub fn listed_registry(&self, lookup: &str) -> Result<Option<Arc<dyn Registry>>, BuildError> {
        match self {
            Self::Static(addrs) => {
                let mut fixed = StaticRegistry::new();
                fixed.insert(lookup, addrs);
                Ok(Some(Arc::new(fixed)))
            }
            Self::Named {
                endpoints,
                resolver,
            } => {
                let at = FieldPath::root().key("resolver");
                let config = resolve::resolver(resolver).map_err(|e| e.within(&at))?;
                let dns = DnsRegistry::new(config).map_err(|e| BuildError::at(at, e))?;
                let addrs: Vec<SocketAddr> =
                    endpoints.iter().filter_map(Destination::addr).collect();
                let names: Vec<String> = endpoints
                    .iter()
                    .filter(|e| e.addr().is_none())
                    .map(ToString::to_string)
                    .collect();
                let mut listed = NamedEndpoints::new(dns);
                listed.insert(lookup, &addrs, &names);
                Ok(Some(Arc::new(listed)))
            }
            Self::Registry { .. } => Ok(None),
        }
    }

    /// A short label for `/endpoints`.
    pub fn label(&self) -> String {
        match self {
            Self::Static(_) => "static".into(),
            Self::Named { .. } => "static+dns".into(),
            Self::Registry { config, name } => {
                let backend = crate::build::resolve::registry_backend(config);
                format!("{backend}:{name}")
            }
        }
    }
}

/// A service's endpoints as discovery keeps them, with the health mechanisms that hold
/// endpoints out of balancing.
#[derive(Debug)]
pub struct Discovered {
    /// What shaped them.
    pub key: DiscoveryKey,
    /// The set the balancer picks from.
    pub endpoints: Arc<EndpointSet>,
    /// Passive outlier ejection, when configured (an observer of every attempt).
    pub outlier: Option<Arc<crate::health::OutlierDetector>>,
    /// How requests reach the endpoints, which active health checks follow: set by the
    /// state that starts the discovery, and by each later state that keeps it.
    pub tls: Arc<ArcSwap<EndpointTls>>,
    /// Active health checks; they stop with this.
    _health: Option<crate::health::HealthCheckHandle>,
    /// How fresh the set is.
    freshness: Arc<Mutex<Freshness>>,
    /// The pump; it stops when the last holder of this drops it.
    pump: tokio::task::AbortHandle,
}

impl Drop for Discovered {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// How long to wait for a registry's first snapshot before serving without it.
const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

impl Discovered {
    /// Watches `service` (looked up as `name`) in `registry`, waiting briefly for the
    /// first snapshot so the first requests find endpoints.
    pub async fn start(
        service: &str,
        name: &str,
        key: DiscoveryKey,
        registry: &dyn Registry,
        tls: EndpointTls,
        all_metrics: &crate::build::metrics::Metrics,
    ) -> Result<Arc<Discovered>, BuildError> {
        let metrics = &all_metrics.discovery;
        let tls = Arc::new(ArcSwap::from_pointee(tls));
        let service_name: Arc<str> = Arc::from(service);
        let balancer = resolve::balancer(&key.balancer).map_err(|e| e.under("balancer"))?;
        let endpoints = Arc::new(
            EndpointSet::with_config(balancer)
                .with_metrics(service_name.clone(), &all_metrics.balancer),
        );
        let freshness = Arc::new(Mutex::new(Freshness::new()));
        let labels = DiscoveryLabels {
            service: service.to_string(),
        };
        // NOTE: one statement per handle: a family's guard held while another handle of
        // the same family is created would deadlock on its lock.
        let update = |result| UpdateLabels {
            service: service.to_string(),
            result,
        };
        let ok = metrics.updates.get_or_create(&update("ok")).clone();
        let failed = metrics.updates.get_or_create(&update("error")).clone();
        let stale = metrics.stale.get_or_create(&labels).clone();
        let count = metrics.endpoints.get_or_create(&labels).clone();
        let feed = Feed {
            service: service.to_string(),
            endpoints: endpoints.clone(),
            freshness: freshness.clone(),
            ok,
            failed,
            stale,
            count,
        };
        let mut snapshots = registry.watch(name);
        if let Ok(Some(first)) = tokio::time::timeout(FIRST_SNAPSHOT_WAIT, snapshots.next()).await {
            feed.apply(&first);
        }
        let pump = tokio::spawn(async move {
            while let Some(item) = snapshots.next().await {
                feed.apply(&item);
            }
        });
        let health = match &key.health_check {
            Some(section) => Some(crate::health::HealthChecker::spawn(
                service_name.clone(),
                resolve::health_check(section).map_err(|e| e.under("health_check"))?,
                endpoints.clone(),
                tls.clone(),
                all_metrics.health.clone(),
            )),
            None => None,
        };
        let outlier = match &key.outlier {
            Some(section) => Some(Arc::new(crate::health::OutlierDetector::new(
                service_name,
                resolve::outlier(section).map_err(|e| e.under("outlier_detection"))?,
                endpoints.clone(),
                all_metrics.health.clone(),
            ))),
            None => None,
        };
        Ok(Arc::new(Discovered {
            key,
            endpoints,
            outlier,
            tls,
            _health: health,
            freshness,
            pump: pump.abort_handle(),
        }))
    }

    /// `Some(how long)` while the endpoints are stale, with the registry's last error.
    pub fn staleness(&self) -> Option<(Duration, String)> {
        let freshness = self.freshness.lock().ok()?;
        let since = freshness.stale_since()?;
        let error = freshness
            .last_error()
            .map(ToString::to_string)
            .unwrap_or_default();
        Some((since.elapsed(), error))
    }
}

/// What the pump writes to.
struct Feed {
    service: String,
    endpoints: Arc<EndpointSet>,
    freshness: Arc<Mutex<Freshness>>,
    ok: Counter,
    failed: Counter,
    stale: Gauge,
    count: Gauge,
}

impl Feed {
    fn apply(&self, item: &Result<Vec<Instance>, DiscoveryError>) {
        let was_stale = self.freshness.lock().map(|f| f.is_stale()).unwrap_or(false);
        if let Ok(mut freshness) = self.freshness.lock() {
            freshness.observe(item, Instant::now());
        }
        match item {
            Ok(instances) => {
                self.endpoints.update(instances);
                self.ok.inc();
                self.stale.set(0);
                self.count
                    .set(i64::try_from(instances.len()).unwrap_or(i64::MAX));
                if was_stale {
                    tracing::info!(service = %self.service, endpoints = instances.len(), "discovery recovered");
                }
            }
            Err(error) => {
                self.failed.inc();
                self.stale.set(1);
                if !was_stale {
                    tracing::warn!(
                        service = %self.service,
                        %error,
                        "discovery failed; the last known endpoints keep serving",
                    );
                }
            }
        }
    }
}
