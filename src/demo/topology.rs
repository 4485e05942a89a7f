//! The demo's processes-in-a-process: each example service's instances, an inbound
//! sidecar in front of each instance, and one `frontend` sidecar whose outbound side
//! reaches them all.
//!
//! ```text
//! load generator ──> frontend sidecar ──┬─ outbound (Host: catalog) ──> catalog-N sidecar ──> catalog-N app
//!                                       └─ inventory port (h2) ───────> inventory-N sidecar ──> inventory-N app
//! ```
//!
//! HTTP services are reached on the frontend's shared outbound port by `Host`; gRPC
//! services each get a dedicated port, as a gRPC client addressing a plain `host:port`
//! would use. Every listener binds `127.0.0.1:0`, so the demo never collides with
//! anything already running.
//!
//! A service with [`Membership::Discovered`] is not given to the frontend as static
//! endpoints: the frontend watches the demo's `file` [`registry`](super::registry),
//! which lists only some of its instances at first; the scenes rewrite it to make
//! instances join and leave.
//!
//! The frontend guards each service with resilience policies ([`frontend_policies`]),
//! each named after the service: an overall timeout, retries, a service breaker, a
//! fallback, and for a service with [`ServiceSpec::rate_limit`] a rate limit. The
//! [`scenes`](super::scenes) make them visible by changing the apps' faults.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use super::apps::{AppInstance, AppKind, Faults};
use super::load::{Caller, GrpcCaller, HttpCaller};
use super::registry::{DemoRegistry, Listing, REGISTRY_NAME};
use super::DemoError;
use crate::config::{
    self, BackoffPolicy, BreakerPolicy, BudgetPolicy, Condition, Config, DiscoveryRef,
    FailureRatePolicy, FallbackPolicy, FallbackTrigger, FileSection, GrpcCodeName, InboundSection,
    OutboundSection, Percent, PoliciesSection, Rate, RateLimitKeyName, RateLimitPolicy,
    RegistrySection, RetryPolicy, ServiceSection, StaticResponsePolicy, TimeoutPolicy,
    UpstreamProtocol,
};
use crate::serve::sidecar::Sidecar;

/// The frontend sidecar's service name: the load generator is its local app.
pub const FRONTEND: &str = "frontend";

/// How long each sidecar may drain at the end. Short: the load has already stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// An example service as the demo should start it.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Its name: the frontend routes to it by this name, instances are `<name>-<n>`.
    pub name: String,
    /// What its instances speak.
    pub kind: AppKind,
    /// How many instances (each with its own inbound sidecar).
    pub instances: usize,
    /// The faults every instance starts with (and returns to between scenes).
    pub faults: Faults,
    /// Calls per second the frontend lets through to it (one bucket for all callers,
    /// with a small burst); `None` sets no rate limit.
    pub rate_limit: Option<u32>,
    /// Where the frontend finds its instances.
    pub membership: Membership,
}

/// Where the frontend finds a service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Every instance, as static endpoints.
    Static,
    /// The demo's `file` registry, which lists the first `listed` instances at the start
    /// (the others run, unlisted, until a scene lists them).
    Discovered {
        /// How many instances are listed at the start.
        listed: usize,
    },
}

impl ServiceSpec {
    /// The instances (counting from 1) the frontend calls at the start.
    pub fn listed_at_start(&self) -> Vec<usize> {
        let listed = match self.membership {
            Membership::Static => self.instances,
            Membership::Discovered { listed } => listed.min(self.instances),
        };
        (1..=listed).collect()
    }
}

/// `catalog` (HTTP, two instances) and `inventory` (gRPC, three instances, two of them
/// listed in the registry at first), each a little slow and now and then failing, so
/// that the table has something to show. `catalog` is rate limited at 200 calls/s:
/// above the default load's 150/s, below a burst scene's.
pub fn default_services() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec {
            name: "catalog".to_string(),
            kind: AppKind::Http,
            instances: 2,
            faults: Faults {
                latency: Duration::from_millis(2),
                jitter: Duration::from_millis(6),
                error_rate: 0.01,
            },
            rate_limit: Some(200),
            membership: Membership::Static,
        },
        ServiceSpec {
            name: "inventory".to_string(),
            kind: AppKind::Grpc,
            instances: 3,
            faults: Faults {
                latency: Duration::from_millis(1),
                jitter: Duration::from_millis(3),
                error_rate: 0.005,
            },
            rate_limit: None,
            membership: Membership::Discovered { listed: 2 },
        },
    ]
}

/// One instance: the app and the sidecar in front of it.
pub struct Instance {
    /// The example app.
    pub app: AppInstance,
    /// Its inbound sidecar.
    pub sidecar: Sidecar,
}

/// One started service.
pub struct RunningService {
    /// What was asked for.
    pub spec: ServiceSpec,
    /// Its instances, in order (`<name>-1` first).
    pub instances: Vec<Instance>,
    /// Where the frontend sidecar takes calls for it (shared outbound or dedicated port).
    pub entry: SocketAddr,
}

impl RunningService {
    /// How the load generator calls it through the frontend sidecar.
    pub fn caller(&self) -> Result<Arc<dyn Caller>, DemoError> {
        let invalid = |reason: String| DemoError::Caller {
            service: self.spec.name.clone(),
            reason,
        };
        Ok(match self.spec.kind {
            AppKind::Http => Arc::new(
                HttpCaller::new(self.entry, &self.spec.name).map_err(|e| invalid(e.to_string()))?,
            ),
            AppKind::Grpc => {
                Arc::new(GrpcCaller::new(self.entry).map_err(|e| invalid(e.to_string()))?)
            }
        })
    }
}

/// Everything the demo started, ready to be called through `frontend`.
pub struct Topology {
    /// The sidecar the load generator calls through.
    pub frontend: Sidecar,
    /// The example services, in the order they were asked for.
    pub services: Vec<RunningService>,
    /// The registry of the services with [`Membership::Discovered`], following the
    /// frontend; `None` when every service has static endpoints.
    pub registry: Option<Arc<DemoRegistry>>,
}

impl Topology {
    /// Starts every instance of `specs` behind its sidecar, then the frontend sidecar.
    pub async fn start(specs: &[ServiceSpec]) -> Result<Topology, DemoError> {
        let mut started = Vec::new();
        for spec in specs {
            started.push(start_instances(spec).await?);
        }
        let mut registry = match listing_at_start(specs, &started) {
            Some(listing) => Some(
                DemoRegistry::create(&listing)
                    .await
                    .map_err(|source| DemoError::Registry { source })?,
            ),
            None => None,
        };
        let frontend_config = frontend_config(specs, &started, registry.as_ref())?;
        let frontend =
            Sidecar::start(frontend_config)
                .await
                .map_err(|source| DemoError::Sidecar {
                    name: FRONTEND.to_string(),
                    source,
                })?;
        let mut services = Vec::new();
        for (spec, instances) in specs.iter().zip(started) {
            let addrs = frontend.addrs();
            let entry = match spec.kind {
                AppKind::Http => addrs.outbound,
                AppKind::Grpc => addrs.service(&spec.name),
            };
            let entry = entry.ok_or_else(|| DemoError::Caller {
                service: spec.name.clone(),
                reason: "the frontend sidecar has no listener for it".to_string(),
            })?;
            services.push(RunningService {
                spec: spec.clone(),
                instances,
                entry,
            });
        }
        if let (Some(registry), Some(admin)) = (&mut registry, frontend.addrs().admin) {
            registry.follow_frontend(admin);
        }
        Ok(Topology {
            frontend,
            services,
            registry: registry.map(Arc::new),
        })
    }

    /// Every sidecar's listeners and where to read its metrics, and a call to try.
    pub fn describe(&self) -> String {
        let mut lines: Vec<(String, String, String)> = Vec::new();
        let admin = |sidecar: &Sidecar| match sidecar.addrs().admin {
            Some(addr) => format!("http://{addr}/metrics"),
            None => "-".to_string(),
        };
        let addr = |addr: Option<SocketAddr>| addr.map_or("-".to_string(), |a| a.to_string());
        let mut listeners = vec![format!("outbound {}", addr(self.frontend.addrs().outbound))];
        for (name, port) in &self.frontend.addrs().services {
            listeners.push(format!("{name} {port}"));
        }
        lines.push((
            FRONTEND.to_string(),
            listeners.join(", "),
            admin(&self.frontend),
        ));
        for service in &self.services {
            for instance in &service.instances {
                lines.push((
                    instance.app.name.to_string(),
                    format!(
                        "inbound {} -> app {}",
                        addr(instance.sidecar.addrs().inbound),
                        instance.app.addr
                    ),
                    admin(&instance.sidecar),
                ));
            }
        }
        let name_width = lines.iter().map(|l| l.0.len()).max().unwrap_or(0);
        let listen_width = lines.iter().map(|l| l.1.len()).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<name_width$}  {:<listen_width$}  metrics",
            "sidecar", "listeners"
        );
        for (name, listeners, metrics) in &lines {
            let _ = writeln!(
                out,
                "{name:<name_width$}  {listeners:<listen_width$}  {metrics}"
            );
        }
        for service in &self.services {
            let _ = match service.spec.kind {
                AppKind::Http => writeln!(
                    out,
                    "try: curl -H 'Host: {}' http://{}/items/7",
                    service.spec.name, service.entry
                ),
                AppKind::Grpc => writeln!(
                    out,
                    "try: grpcurl -plaintext -import-path proto -proto echo.proto {} remora.echo.v1.Echo/Unary",
                    service.entry
                ),
            };
        }
        out
    }

    /// Drains the frontend, then the instances' sidecars, then stops the apps (and
    /// removes the registry file).
    pub async fn shutdown(self) {
        self.frontend.shutdown().await;
        let (sidecars, apps): (Vec<_>, Vec<_>) = self
            .services
            .into_iter()
            .flat_map(|service| service.instances)
            .map(|instance| (instance.sidecar, instance.app))
            .unzip();
        join_all(sidecars.into_iter().map(Sidecar::shutdown)).await;
        join_all(apps.into_iter().map(AppInstance::shutdown)).await;
    }
}

/// Starts `spec.instances` apps, each behind an inbound sidecar.
async fn start_instances(spec: &ServiceSpec) -> Result<Vec<Instance>, DemoError> {
    let mut instances = Vec::new();
    for n in 1..=spec.instances {
        let name = format!("{}-{n}", spec.name);
        let app = AppInstance::start(spec.kind, &name, spec.faults.clone())
            .await
            .map_err(|source| DemoError::App {
                name: name.clone(),
                source,
            })?;
        let mut config = base_config(&name)?;
        config.inbound = Some(InboundSection {
            listen: loopback_any_port(),
            app: app.addr.into(),
            protocol: protocol_of(spec.kind),
            timeout: None,
            rate_limit: None,
            max_in_flight: None,
            fallback: None,
            fault: None,
            tls: None,
            allow: None,
            authorize: Vec::new(),
            tcp: None,
        });
        let sidecar = Sidecar::start(validated(&config)?)
            .await
            .map_err(|source| DemoError::Sidecar { name, source })?;
        instances.push(Instance { app, sidecar });
    }
    Ok(instances)
}

/// The registry's first listing: each discovered service's instances listed at the
/// start; `None` when no service is discovered.
fn listing_at_start(specs: &[ServiceSpec], started: &[Vec<Instance>]) -> Option<Listing> {
    let listing: Listing = specs
        .iter()
        .zip(started)
        .filter(|(spec, _)| matches!(spec.membership, Membership::Discovered { .. }))
        .map(|(spec, instances)| {
            let listed = spec
                .listed_at_start()
                .into_iter()
                .filter_map(|n| instances.get(n - 1)?.sidecar.addrs().inbound)
                .collect();
            (spec.name.clone(), listed)
        })
        .collect();
    (!listing.is_empty()).then_some(listing)
}

/// The frontend: HTTP services by `Host` on the shared outbound port, gRPC services on
/// dedicated ports, each with its instances' inbound sidecars as static endpoints, or
/// discovered from `registry` for a service with [`Membership::Discovered`].
fn frontend_config(
    specs: &[ServiceSpec],
    started: &[Vec<Instance>],
    registry: Option<&DemoRegistry>,
) -> Result<Config, DemoError> {
    let mut config = base_config(FRONTEND)?;
    config.outbound = Some(OutboundSection {
        listen: loopback_any_port(),
    });
    if let Some(registry) = registry {
        config.registries.insert(
            REGISTRY_NAME.to_string(),
            RegistrySection {
                file: Some(FileSection {
                    path: registry.path().to_path_buf(),
                }),
                ..RegistrySection::default()
            },
        );
    }
    for (spec, instances) in specs.iter().zip(started) {
        let (endpoints, discovery) = match spec.membership {
            Membership::Static => (
                instances
                    .iter()
                    .filter_map(|instance| instance.sidecar.addrs().inbound)
                    .map(Into::into)
                    .collect(),
                None,
            ),
            Membership::Discovered { .. } => (
                Vec::new(),
                Some(DiscoveryRef {
                    registry: REGISTRY_NAME.to_string(),
                    name: None,
                }),
            ),
        };
        let listen = match spec.kind {
            AppKind::Http => None,
            AppKind::Grpc => Some(loopback_any_port()),
        };
        let name = spec.name.clone();
        let has_rate_limit = add_policies(&mut config.policies, spec);
        config.services.insert(
            name.clone(),
            ServiceSection {
                listen,
                protocol: protocol_of(spec.kind),
                endpoints,
                discovery,
                timeout: Some(name.clone()),
                retry: Some(name.clone()),
                breaker: Some(name.clone()),
                rate_limit: has_rate_limit.then(|| name.clone()),
                fallback: Some(name.clone()),
                ..ServiceSection::default()
            },
        );
    }
    validated(&config)
}

/// The policies the frontend applies to `spec`, for a person to inspect (e.g. in
/// `/config` of the frontend's admin port) and for tests.
pub fn frontend_policies(spec: &ServiceSpec) -> PoliciesSection {
    let mut policies = PoliciesSection::default();
    add_policies(&mut policies, spec);
    policies
}

/// Adds `spec`'s policies to `policies`, each named after the service; says whether a
/// rate limit is among them.
///
/// Sized for the demo's scenes: retries absorb one instance failing half its calls
/// (their budget allows half the calls again), while every instance failing trips the
/// breaker within a few dozen calls; an open breaker retries after 2 s (4 s at most),
/// so recovery shows within a scene.
fn add_policies(policies: &mut PoliciesSection, spec: &ServiceSpec) -> bool {
    let name = spec.name.clone();
    let grpc = spec.kind == AppKind::Grpc;
    policies
        .timeouts
        .insert(name.clone(), TimeoutPolicy(Duration::from_secs(1)));
    let retry_on = if grpc {
        vec![
            Condition::Grpc(tonic::Code::Unavailable),
            Condition::ConnectFailure,
            Condition::Reset,
        ]
    } else {
        vec![
            Condition::ServerError,
            Condition::ConnectFailure,
            Condition::Reset,
        ]
    };
    policies.retries.insert(
        name.clone(),
        RetryPolicy {
            attempts: 3,
            retry_on: retry_on.clone(),
            per_try_timeout: None,
            backoff: BackoffPolicy {
                base: Duration::from_millis(5),
                max: Duration::from_millis(50),
                jitter: Percent(0.5),
            },
            budget: BudgetPolicy {
                ratio: Percent(0.5),
                min_per_second: 20,
                window: Duration::from_secs(5),
            },
            // Every gRPC call is a POST; the demo's Echo calls are safe to repeat.
            retry_non_idempotent: grpc,
            max_replay_bytes: 64 * 1024,
        },
    );
    let mut failure_on = retry_on;
    failure_on.push(Condition::TryTimeout);
    policies.breakers.insert(
        name.clone(),
        BreakerPolicy {
            // Ten in a row: one instance failing every other call never gets there.
            consecutive_failures: Some(10),
            failure_rate: Some(FailureRatePolicy {
                threshold: Percent(0.6),
                min_requests: 50,
                window: Duration::from_secs(2),
            }),
            open_for: Duration::from_secs(2),
            max_open_for: Duration::from_secs(4),
            half_open_requests: 3,
            failure_on,
        },
    );
    let respond = if grpc {
        StaticResponsePolicy {
            status: 503,
            body: format!("{name} is degraded"),
            grpc_status: Some(GrpcCodeName(tonic::Code::Unavailable)),
            grpc_message: Some(format!("{name} is degraded, try again shortly")),
            ..StaticResponsePolicy::default()
        }
    } else {
        StaticResponsePolicy {
            status: 200,
            headers: [("content-type".to_string(), "application/json".to_string())].into(),
            body: r#"{"items": [], "degraded": true}"#.to_string(),
            ..StaticResponsePolicy::default()
        }
    };
    let mut on = vec![FallbackTrigger::BreakerOpen, FallbackTrigger::Timeout];
    if !grpc {
        on.push(FallbackTrigger::Upstream5xx);
    }
    if spec.rate_limit.is_some() {
        on.push(FallbackTrigger::RateLimited);
    }
    policies.fallbacks.insert(
        name.clone(),
        FallbackPolicy {
            on,
            respond: Some(respond),
            forward_to: None,
            stale: None,
        },
    );
    let Some(rate) = spec.rate_limit else {
        return false;
    };
    policies.rate_limits.insert(
        name,
        RateLimitPolicy {
            rate: Rate {
                count: rate.max(1),
                per: Duration::from_secs(1),
            },
            // A fifth of a second's worth: smooths pacing jitter, not a burst scene.
            burst: Some((rate / 5).max(1)),
            key: RateLimitKeyName::Global,
            shared: None,
        },
    );
    true
}

/// A config with every default, named `name`, its admin port on loopback; the caller
/// adds listeners and services, then [`validated`] checks the result.
fn base_config(name: &str) -> Result<Config, DemoError> {
    // NOTE: `Config` has no `Default`; decoding an empty document gives every field its
    // schema default, so the demo keeps building as the schema grows. It skips
    // validation: an empty config proxies nothing, so [`validated`] checks the final one.
    let mut config: Config =
        serde_saphyr::from_str("{}").map_err(|source| DemoError::Defaults {
            name: name.to_string(),
            source: Box::new(source),
        })?;
    config.service = name.to_string();
    config.admin.listen = loopback_any_port();
    config.drain_timeout = DRAIN_TIMEOUT;
    Ok(config)
}

/// `config` after the same checks a YAML file gets (through its YAML rendering).
fn validated(config: &Config) -> Result<Config, DemoError> {
    let origin = format!("remora demo ({})", config.service);
    crate::build::parse(&origin, &config::to_yaml(config)).map_err(|source| DemoError::Config {
        name: config.service.clone(),
        source,
    })
}

fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn protocol_of(kind: AppKind) -> UpstreamProtocol {
    match kind {
        AppKind::Http => UpstreamProtocol::Http1,
        AppKind::Grpc => UpstreamProtocol::Http2,
    }
}
