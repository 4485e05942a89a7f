//! The YAML schema of service discovery: named registries, a service's `discovery`
//! reference, and the sidecar's own registration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{closest, FieldPath};
use super::schema::Config;
use super::tls::TlsSection;
use super::validate::Issue;

/// A registry: exactly one of the backends.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// etcd: instances under `<prefix>/<service>/<id>` as JSON, watched.
    #[serde(default)]
    pub etcd: Option<EtcdSection>,
    /// Consul: the agent's health API with blocking queries.
    #[serde(default)]
    pub consul: Option<ConsulSection>,
    /// DNS: A/AAAA (`name:port`) or SRV (`_service._proto.name`), re-resolved.
    #[serde(default)]
    pub dns: Option<DnsSection>,
    /// A YAML or JSON file of services -> instances, watched.
    #[serde(default)]
    pub file: Option<FileSection>,
    /// Eureka: the REST API, a full fetch then deltas checked by hash code.
    #[serde(default)]
    pub eureka: Option<Box<EurekaSection>>,
    /// Nacos: the open API v1, polled; registration with heartbeats.
    #[serde(default)]
    pub nacos: Option<Box<NacosSection>>,
    /// ZooKeeper: Curator's service discovery layout, watched; ephemeral registration.
    #[serde(default)]
    pub zookeeper: Option<Box<ZookeeperSection>>,
}

/// ZooKeeper settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperSection {
    /// The ensemble's client addresses, `host:port`.
    pub servers: Vec<String>,
    /// The znode holding every service (`<base>/<service>/<id>`); Spring Cloud
    /// Zookeeper's `/services` by default.
    #[serde(default = "default_zookeeper_base")]
    pub base: String,
    /// Session timeout of the watches' sessions (a registration's session uses
    /// `register.ttl`); the server bounds it.
    #[serde(
        default = "default_zookeeper_session",
        with = "super::scalar::duration"
    )]
    pub session_timeout: Duration,
    /// What a registration writes in Curator's `payload`.
    #[serde(default)]
    pub payload: ZookeeperPayloadSection,
}

/// The `payload` of remora's registrations in ZooKeeper.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZookeeperPayloadSection {
    /// Spring Cloud Zookeeper's `ZookeeperInstance`, carrying the metadata.
    #[default]
    SpringCloud,
    /// `null`: readable by any Curator client; the metadata is not carried.
    None,
}

/// Nacos settings. `Debug` hides the password; `/config` shows [`Config::redacted`].
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NacosSection {
    /// The server, `http://nacos:8848` (path default `/nacos`) or `https://...`.
    pub address: String,
    /// The namespace id (default: the public namespace).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The group of the services looked up and registered.
    #[serde(default = "default_nacos_group")]
    pub group: String,
    /// The cluster registered in, and the only one watched when set.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Login for an access token; with `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// A secret, hidden in `/config` and logs.
    #[serde(default)]
    pub password: Option<String>,
    /// Time between two reads of a watched service.
    #[serde(default = "default_nacos_poll", with = "super::scalar::duration")]
    pub poll_interval: Duration,
    /// HTTPS toward the server: its CA, a client certificate. Without it, an `https://`
    /// address is checked against the system's roots.
    #[serde(default)]
    pub tls: Option<Box<TlsSection>>,
}

impl std::fmt::Debug for NacosSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NacosSection")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field("group", &self.group)
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| super::REDACTED))
            .field("poll_interval", &self.poll_interval)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Eureka settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EurekaSection {
    /// The server's service URL, `http://eureka:8761/eureka` (path default `/eureka`)
    /// or `https://...`.
    pub url: String,
    /// The application name this sidecar registers under (default: the registered name).
    #[serde(default)]
    pub app: Option<String>,
    /// Heartbeat period of the registration (at most a third of `register.ttl`).
    #[serde(default = "default_eureka_renew", with = "super::scalar::duration")]
    pub renew_interval: Duration,
    /// Time between delta fetches of a watch.
    #[serde(default = "default_eureka_poll", with = "super::scalar::duration")]
    pub poll_interval: Duration,
    /// HTTPS toward the server: its CA, a client certificate. Without it, an `https://`
    /// URL is checked against the system's roots.
    #[serde(default)]
    pub tls: Option<Box<TlsSection>>,
}

/// etcd settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// Client URLs of the cluster, all `http://` or all `https://`.
    pub endpoints: Vec<String>,
    /// Key prefix of every service.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// TLS toward the cluster (`https://` endpoints): its CA, a client certificate.
    /// Without it, `https://` endpoints are checked against the system's roots.
    #[serde(default)]
    pub tls: Option<Box<TlsSection>>,
}

/// Consul settings. `Debug` hides the token; `/config` shows [`Config::redacted`].
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulSection {
    /// The agent's address: `host:port` (plain HTTP), `http://host:port` or
    /// `https://host:port`.
    pub address: String,
    /// ACL token, sent as `X-Consul-Token`; a secret, hidden in `/config` and logs.
    #[serde(default)]
    pub token: Option<String>,
    /// HTTPS toward the agent: its CA, a client certificate. Without it, an `https://`
    /// address is checked against the system's roots.
    #[serde(default)]
    pub tls: Option<Box<TlsSection>>,
}

impl std::fmt::Debug for ConsulSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulSection")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| super::REDACTED))
            .field("tls", &self.tls)
            .finish()
    }
}

/// DNS settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// The server to ask; default: the system's resolver configuration.
    #[serde(default, with = "super::scalar::opt_socket_addr")]
    pub nameserver: Option<SocketAddr>,
    /// Re-resolve at this fixed interval instead of at the records' TTL.
    #[serde(default, with = "super::scalar::opt_duration")]
    pub interval: Option<Duration>,
}

/// File settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSection {
    /// The file (`.json` is read as JSON, anything else as YAML).
    pub path: PathBuf,
}

/// Where a service's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryRef {
    /// A `registries` name.
    pub registry: String,
    /// The name to look up (default: the service's name). For DNS: `host:port` or an
    /// SRV name.
    #[serde(default)]
    pub name: Option<String>,
}

/// The local app's registration in a registry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSection {
    /// A `registries` name (etcd, Consul, Eureka, Nacos or ZooKeeper).
    pub registry: String,
    /// The service name to register under (default: `service`).
    #[serde(default)]
    pub name: Option<String>,
    /// The address other sidecars reach this one's inbound listener at: `ip:port`, or
    /// `host:port` with a name the system resolver turns into this host's address when
    /// the sidecar registers (`inventory-1:15026` in docker-compose).
    pub address: super::Destination,
    /// The instance id (default: the address as written).
    #[serde(default)]
    pub id: Option<String>,
    /// Relative share of traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Free-form labels (`zone`, `version`).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Lease / check TTL; kept alive every third of it. An instance whose sidecar dies
    /// disappears when it expires.
    #[serde(default = "default_ttl", with = "super::scalar::duration")]
    pub ttl: Duration,
    /// On shutdown, time between deregistering and draining, so that callers learn of
    /// the departure before connections close.
    #[serde(default = "default_deregister_delay", with = "super::scalar::duration")]
    pub deregister_delay: Duration,
}

/// How a service's calls are spread over its endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerSection {
    /// `p2c` (power of two choices on in-flight × peak-EWMA latency), `round_robin`,
    /// `least_request`, `random`, `ring_hash` or `maglev` (consistent hashing).
    #[serde(default)]
    pub algorithm: BalancerAlgorithm,
    /// For `ring_hash` / `maglev`: `header:<name>`, `cookie:<name>` or `client_ip`.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// When fewer than this share of endpoints are ready, balance over all of them
    /// rather than overload the few (Envoy's panic mode); `0%` disables it.
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: super::Percent,
}

impl Default for BalancerSection {
    fn default() -> Self {
        Self {
            algorithm: BalancerAlgorithm::default(),
            hash_key: None,
            panic_threshold: default_panic_threshold(),
        }
    }
}

/// Balancing algorithms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerAlgorithm {
    /// Power of two choices, peak EWMA.
    #[default]
    P2c,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Power of two choices on in-flight calls.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring.
    RingHash,
    /// Consistent hashing with a Maglev table.
    Maglev,
}

/// Active health checks of a service's endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// An HTTP probe: `{ path: /healthz, expected: ["200-399"] }`.
    #[serde(default)]
    pub http: Option<HttpProbeSection>,
    /// A TCP connect probe: `tcp: {}`.
    #[serde(default)]
    pub tcp: Option<TcpProbeSection>,
    /// A `grpc.health.v1.Health/Check` probe: `{ service: "" }` (empty = the server).
    #[serde(default)]
    pub grpc: Option<GrpcProbeSection>,
    /// Time between probe rounds.
    #[serde(default = "default_probe_interval", with = "super::scalar::duration")]
    pub interval: Duration,
    /// Time limit of one probe.
    #[serde(default = "default_probe_timeout", with = "super::scalar::duration")]
    pub timeout: Duration,
    /// Failed probes in a row that take an endpoint out of balancing.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Passed probes in a row that bring it back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
}

/// HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbeSection {
    /// The path requested.
    pub path: String,
    /// Passing statuses: `"200-399"`, `"204"`.
    #[serde(default = "default_expected")]
    pub expected: Vec<String>,
    /// The Host header sent (default: the endpoint's address).
    #[serde(default)]
    pub host: Option<String>,
}

/// TCP probe.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbeSection {}

/// gRPC health probe.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcProbeSection {
    /// The service asked about; empty asks about the whole server.
    #[serde(default)]
    pub service: String,
}

/// Passive outlier ejection: endpoints that keep failing are taken out for a while.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSection {
    /// Failures in a row that eject an endpoint.
    #[serde(default = "default_outlier_failures")]
    pub consecutive_failures: u32,
    /// What counts as a failure (same words as `retry_on`).
    #[serde(default = "default_outlier_failure_on")]
    pub failure_on: Vec<super::Condition>,
    /// First ejection's length; each further ejection lasts this times its count.
    #[serde(default = "default_base_ejection", with = "super::scalar::duration")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(default = "default_max_ejection", with = "super::scalar::duration")]
    pub max_ejection: Duration,
    /// Most of the set ejected at once.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: super::Percent,
}

fn default_panic_threshold() -> super::Percent {
    super::Percent(0.5)
}
fn default_probe_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_expected() -> Vec<String> {
    vec!["200-399".into()]
}
fn default_outlier_failures() -> u32 {
    5
}
fn default_outlier_failure_on() -> Vec<super::Condition> {
    vec![
        super::Condition::ServerError,
        super::Condition::ConnectFailure,
    ]
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> super::Percent {
    super::Percent(0.5)
}

fn default_nacos_group() -> String {
    "DEFAULT_GROUP".into()
}
fn default_nacos_poll() -> Duration {
    Duration::from_secs(2)
}
fn default_eureka_renew() -> Duration {
    Duration::from_secs(30)
}
fn default_eureka_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_zookeeper_base() -> String {
    "/services".into()
}
fn default_zookeeper_session() -> Duration {
    Duration::from_secs(10)
}
fn default_etcd_prefix() -> String {
    "/remora/services".into()
}
fn default_weight() -> u32 {
    1
}
fn default_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_deregister_delay() -> Duration {
    Duration::from_secs(2)
}

/// Which backend a registry uses, for messages.
pub fn backend_of(registry: &RegistrySection) -> Option<&'static str> {
    let given: Vec<&'static str> = [
        registry.etcd.as_ref().map(|_| "etcd"),
        registry.consul.as_ref().map(|_| "consul"),
        registry.dns.as_ref().map(|_| "dns"),
        registry.file.as_ref().map(|_| "file"),
        registry.eureka.as_ref().map(|_| "eureka"),
        registry.nacos.as_ref().map(|_| "nacos"),
        registry.zookeeper.as_ref().map(|_| "zookeeper"),
    ]
    .into_iter()
    .flatten()
    .collect();
    match given.as_slice() {
        [one] => Some(one),
        _ => None,
    }
}

/// Registries, discovery references and registration.
pub(crate) fn check(config: &Config, issues: &mut Vec<Issue>) {
    let root = FieldPath::root().key("registries");
    for (name, registry) in &config.registries {
        let path = root.key(name);
        if backend_of(registry).is_none() {
            issues.push(Issue::at(
                path.clone(),
                "a registry takes exactly one of `etcd`, `consul`, `dns`, `file`, `eureka`, `nacos`, `zookeeper`",
            ));
        }
        if let Some(etcd) = &registry.etcd {
            if etcd.endpoints.is_empty() {
                issues.push(Issue::at(
                    path.key("etcd").key("endpoints"),
                    "list at least one etcd client URL",
                ));
            }
            for (i, url) in etcd.endpoints.iter().enumerate() {
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    issues.push(Issue::at(
                        path.key("etcd").key("endpoints").index(i),
                        format!("invalid etcd URL {url:?}: write it like `http://127.0.0.1:2379`"),
                    ));
                }
            }
            let https = etcd.endpoints.iter().filter(|u| u.starts_with("https://"));
            match https.count() {
                0 if etcd.tls.is_some() => issues.push(Issue::at(
                    path.key("etcd").key("tls"),
                    "TLS needs https:// endpoints",
                )),
                0 => {}
                n if n != etcd.endpoints.len() => issues.push(Issue::at(
                    path.key("etcd").key("endpoints"),
                    "endpoints must be all http:// or all https://",
                )),
                _ => {}
            }
        }
        if let Some(consul) = &registry.consul {
            if consul.tls.is_some() && consul.address.starts_with("http://") {
                issues.push(Issue::at(
                    path.key("consul").key("tls"),
                    "TLS needs an https:// (or bare host:port) address",
                ));
            }
        }
        if let Some(eureka) = &registry.eureka {
            let url = &eureka.url;
            if !url.starts_with("http://") && !url.starts_with("https://") {
                issues.push(Issue::at(
                    path.key("eureka").key("url"),
                    format!(
                        "invalid Eureka URL {url:?}: write it like `http://127.0.0.1:8761/eureka`"
                    ),
                ));
            } else if eureka.tls.is_some() && url.starts_with("http://") {
                issues.push(Issue::at(
                    path.key("eureka").key("tls"),
                    "TLS needs an https:// URL",
                ));
            }
        }
        if let Some(nacos) = &registry.nacos {
            let address = &nacos.address;
            if !address.starts_with("http://") && !address.starts_with("https://") {
                issues.push(Issue::at(
                    path.key("nacos").key("address"),
                    format!(
                        "invalid Nacos address {address:?}: write it like `http://127.0.0.1:8848`"
                    ),
                ));
            } else if nacos.tls.is_some() && address.starts_with("http://") {
                issues.push(Issue::at(
                    path.key("nacos").key("tls"),
                    "TLS needs an https:// address",
                ));
            }
            if nacos.username.is_some() != nacos.password.is_some() {
                issues.push(Issue::at(
                    path.key("nacos"),
                    "`username` and `password` go together",
                ));
            }
        }
        if let Some(zookeeper) = &registry.zookeeper {
            check_zookeeper(zookeeper, &path.key("zookeeper"), issues);
        }
        if let Some(dns) = &registry.dns {
            if dns.interval.is_some_and(|i| i.is_zero()) {
                issues.push(Issue::at(
                    path.key("dns").key("interval"),
                    "the interval must be longer than zero",
                ));
            }
        }
    }
    let names: Vec<&str> = config.registries.keys().map(String::as_str).collect();
    let unknown = |name: &str| {
        let mut message = format!("unknown registry `{name}`");
        if let Some(close) = closest(name, &names) {
            message.push_str(&format!(", did you mean `{close}`?"));
        }
        message
    };
    for (service_name, service) in &config.services {
        let path = FieldPath::root().key("services").key(service_name);
        if let Some(discovery) = &service.discovery {
            if !config.registries.contains_key(&discovery.registry) {
                issues.push(Issue::at(
                    path.key("discovery").key("registry"),
                    unknown(&discovery.registry),
                ));
            }
            if !service.endpoints.is_empty() {
                issues.push(Issue::at(
                    path.key("endpoints"),
                    "a service takes `endpoints` or `discovery`, not both",
                ));
            }
        }
    }
    if let Some(register) = &config.register {
        let path = FieldPath::root().key("register");
        match config.registries.get(&register.registry) {
            None => issues.push(Issue::at(path.key("registry"), unknown(&register.registry))),
            Some(registry) if registry.dns.is_some() || registry.file.is_some() => {
                issues.push(Issue::at(
                    path.key("registry"),
                    "only etcd, Consul, Eureka, Nacos and ZooKeeper registries take registrations",
                ))
            }
            Some(_) => {}
        }
        if register.ttl < Duration::from_secs(1) {
            issues.push(Issue::at(path.key("ttl"), "the TTL must be at least 1s"));
        }
        let unspecified = register
            .address
            .addr()
            .is_some_and(|a| a.ip().is_unspecified());
        if unspecified || register.address.port() == 0 {
            issues.push(Issue::at(
                path.key("address"),
                "register the address others reach this sidecar at: a specific IP or host name, and a port",
            ));
        }
        if config.inbound.is_none() {
            issues.push(Issue::at(
                path.clone(),
                "registering needs an `inbound` listener to receive the traffic",
            ));
        }
    }
}

/// A `zookeeper` registry's servers, base and timeout.
fn check_zookeeper(zookeeper: &ZookeeperSection, path: &FieldPath, issues: &mut Vec<Issue>) {
    if zookeeper.servers.is_empty() {
        issues.push(Issue::at(
            path.key("servers"),
            "list at least one ZooKeeper server, like `127.0.0.1:2181`",
        ));
    }
    for (i, server) in zookeeper.servers.iter().enumerate() {
        if !is_host_port(server) {
            issues.push(Issue::at(
                path.key("servers").index(i),
                format!("invalid ZooKeeper server {server:?}: write it like `127.0.0.1:2181`"),
            ));
        }
    }
    if let Err(message) = check_base(zookeeper.base.trim_end_matches('/')) {
        issues.push(Issue::at(path.key("base"), message));
    }
    if zookeeper.session_timeout.is_zero() {
        issues.push(Issue::at(
            path.key("session_timeout"),
            "the session timeout must be longer than zero",
        ));
    }
}

/// Whether `text` is `host:port` with a non-zero port.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !host.is_empty() && !host.contains(['/', ',', ' ']) && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// A znode path under which services live: absolute, not the root, no empty, `.` or
/// `..` segment.
fn check_base(base: &str) -> Result<(), String> {
    let Some(rest) = base.strip_prefix('/') else {
        return Err(format!(
            "the base {base:?} must start with '/', like `/services`"
        ));
    };
    if rest.is_empty() {
        return Err("the base must not be the root znode: write e.g. `/services`".into());
    }
    if rest
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!(
            "the base {base:?} has an empty, `.` or `..` segment"
        ));
    }
    Ok(())
}
