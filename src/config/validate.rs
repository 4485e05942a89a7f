//! Semantic checks on a decoded [`Config`]: what serde's types cannot say.
//!
//! This is the edge where the YAML is distrusted: once a [`Config`] passes, the proxy
//! does not re-check these invariants on the request path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::error::FieldPath;
use super::names::Destination;
use super::schema::{Config, ServiceSection};
use crate::core::labels::{is_service_name, SERVICE_NAME_RULE};

/// hyper refuses HTTP/1 read buffers smaller than this.
pub const MIN_HEADER_BYTES: usize = 8192;

/// One problem found by validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The offending field.
    pub path: FieldPath,
    /// Point at the mapping key rather than the value (for a bad map key).
    pub at_key: bool,
    /// What is wrong.
    pub message: String,
}

impl Issue {
    /// A problem with the value at `path`.
    pub fn at(path: FieldPath, message: impl Into<String>) -> Self {
        Self {
            path,
            at_key: false,
            message: message.into(),
        }
    }

    fn at_key(path: FieldPath, message: impl Into<String>) -> Self {
        Self {
            path,
            at_key: true,
            message: message.into(),
        }
    }
}

/// Puts values in canonical form before validation: host names lowercase, without a
/// trailing dot.
pub(crate) fn normalize(config: &mut Config) {
    for service in config.services.values_mut() {
        for host in &mut service.hosts {
            let canonical = host.trim().trim_end_matches('.').to_ascii_lowercase();
            *host = canonical;
        }
    }
}

/// Every semantic problem in `config` (empty when it is valid).
pub(crate) fn validate(config: &Config) -> Vec<Issue> {
    let mut issues = Vec::new();
    check_something_to_proxy(config, &mut issues);
    check_name(
        &FieldPath::root().key("service"),
        &config.service,
        false,
        &mut issues,
    );
    check_listeners(config, &mut issues);
    check_destinations(config, &mut issues);
    for (name, service) in &config.services {
        check_service(config, name, service, &mut issues);
    }
    check_routes(config, &mut issues);
    check_limits(config, &mut issues);
    check_log(config, &mut issues);
    super::references::check(config, &mut issues);
    super::discovery::check(config, &mut issues);
    super::tls::check(config, &mut issues);
    super::tcp::check(config, &mut issues);
    issues
}

fn check_something_to_proxy(config: &Config, issues: &mut Vec<Issue>) {
    if config.inbound.is_none() && config.services.is_empty() {
        issues.push(Issue::at(
            FieldPath::root(),
            "nothing to proxy: configure `inbound` (traffic to the local app) \
             and/or `services` (traffic from it)",
        ));
    }
}

/// Service names appear in Host headers, metrics labels and logs: keep them DNS-like.
fn check_name(path: &FieldPath, name: &str, at_key: bool, issues: &mut Vec<Issue>) {
    if !is_service_name(name) {
        let message = format!("invalid service name {name:?}: {SERVICE_NAME_RULE}");
        issues.push(if at_key {
            Issue::at_key(path.clone(), message)
        } else {
            Issue::at(path.clone(), message)
        });
    }
}

/// Every address remora binds, with the field that asks for it.
fn listeners(config: &Config) -> Vec<(FieldPath, SocketAddr)> {
    let root = FieldPath::root();
    let mut listeners = vec![(root.key("admin").key("listen"), config.admin.listen)];
    if let Some(inbound) = &config.inbound {
        listeners.push((root.key("inbound").key("listen"), inbound.listen));
    }
    if let Some(outbound) = &config.outbound {
        listeners.push((root.key("outbound").key("listen"), outbound.listen));
    }
    for (name, service) in &config.services {
        if let Some(listen) = service.listen {
            listeners.push((
                root.key("services").key(name.as_str()).key("listen"),
                listen,
            ));
        }
    }
    listeners
}

/// Whether binding both addresses would collide: same non-zero port, and the same IP or
/// a wildcard on either side. Port 0 asks the OS for a fresh port, so it never collides.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn check_listeners(config: &Config, issues: &mut Vec<Issue>) {
    let listeners = listeners(config);
    for (i, (path, addr)) in listeners.iter().enumerate() {
        if let Some((first, _)) = listeners[..i]
            .iter()
            .find(|(_, other)| overlaps(*addr, *other))
        {
            issues.push(Issue::at(
                path.clone(),
                format!("listen address {addr} is already used by `{first}`"),
            ));
        }
    }
}

/// Destinations must be routable and must not be remora itself (a request loop).
/// A name is compared with the listeners only when it is `localhost`: what other names
/// resolve to is known only once they do.
fn check_destinations(config: &Config, issues: &mut Vec<Issue>) {
    let listeners = listeners(config);
    let root = FieldPath::root();
    let mut destinations = Vec::new();
    if let Some(inbound) = &config.inbound {
        destinations.push((root.key("inbound").key("app"), &inbound.app));
    }
    for (name, service) in &config.services {
        let endpoints = root.key("services").key(name.as_str()).key("endpoints");
        for (i, endpoint) in service.endpoints.iter().enumerate() {
            destinations.push((endpoints.index(i), endpoint));
        }
    }
    for (path, destination) in destinations {
        let addrs = match destination {
            Destination::Addr(addr) if addr.port() == 0 || addr.ip().is_unspecified() => {
                issues.push(Issue::at(
                    path,
                    format!("{addr} is not a destination: it needs a specific IP address and a non-zero port"),
                ));
                continue;
            }
            Destination::Addr(addr) => vec![*addr],
            Destination::Name { .. } if destination.port() == 0 => {
                issues.push(Issue::at(
                    path,
                    format!("{destination} is not a destination: it needs a non-zero port"),
                ));
                continue;
            }
            Destination::Name { host, port } if is_localhost(host) => vec![
                SocketAddr::from(([127, 0, 0, 1], *port)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, *port)),
            ],
            Destination::Name { .. } => continue,
        };
        let looping = addrs.iter().find_map(|addr| {
            listeners
                .iter()
                .find(|(_, l)| overlaps(*l, *addr))
                .map(|(listener, _)| listener)
        });
        if let Some(listener) = looping {
            issues.push(Issue::at(
                path,
                format!("{destination} is remora's own listener `{listener}`: requests would loop"),
            ));
        }
    }
}

/// `localhost`, which resolves to the loopback addresses.
fn is_localhost(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
}

/// Whether calls reach service `name` through another one: a route's backend or mirror,
/// or a fallback's `forward_to` (a canary needs no listener of its own).
fn reached_through_others(config: &Config, name: &str) -> bool {
    let routed = config.services.iter().any(|(other, service)| {
        other != name
            && service.routes.iter().any(|route| {
                route.backends.contains_key(name)
                    || route.mirror.as_ref().is_some_and(|m| m.service == name)
            })
    });
    routed
        || config
            .policies
            .fallbacks
            .values()
            .any(|f| f.forward_to.as_deref() == Some(name))
}

fn check_service(config: &Config, name: &str, service: &ServiceSection, issues: &mut Vec<Issue>) {
    let path = FieldPath::root().key("services").key(name);
    check_name(&path, name, true, issues);
    if service.endpoints.is_empty() && service.discovery.is_none() {
        issues.push(Issue::at(
            path.key("endpoints"),
            format!(
                "service `{name}` has no endpoints: list at least one `ip:port` or `host:port`, \
                 or name a registry under `discovery`"
            ),
        ));
    }
    if service.listen.is_none()
        && config.outbound.is_none()
        && !reached_through_others(config, name)
    {
        issues.push(Issue::at_key(
            path.clone(),
            format!(
                "service `{name}` is unreachable: give it a `listen` address, \
                 configure the shared `outbound` listener, or name it in another \
                 service's route `backends` or `mirror`, or a fallback's `forward_to`"
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, host) in service.hosts.iter().enumerate() {
        let host_path = path.key("hosts").index(i);
        if !is_host_name(host) {
            issues.push(Issue::at(
                host_path,
                format!("invalid host {host:?}: a bare host name, without scheme, port or path"),
            ));
        } else if !seen.insert(host.as_str()) {
            issues.push(Issue::at(
                host_path,
                format!("host {host:?} is listed twice"),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, prefix) in service.path_prefixes.iter().enumerate() {
        let prefix_path = path.key("path_prefixes").index(i);
        if !prefix.starts_with('/') || prefix.contains(['?', '#', ' ']) {
            issues.push(Issue::at(
                prefix_path,
                format!("invalid path prefix {prefix:?}: it must start with `/` and hold no query, fragment or space"),
            ));
        } else if !seen.insert(prefix.as_str()) {
            issues.push(Issue::at(
                prefix_path,
                format!("path prefix {prefix:?} is listed twice"),
            ));
        }
    }
}

/// `[a-z0-9][a-z0-9._-]*`, after normalisation (which lowercased it).
fn is_host_name(host: &str) -> bool {
    let mut chars = host.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// No two services may claim the same host with the same path prefix: the router could
/// not choose. Different prefixes on one host are fine (the longest match wins).
fn check_routes(config: &Config, issues: &mut Vec<Issue>) {
    // (host, prefix) -> the service that claimed it first.
    let mut owners: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for (name, service) in &config.services {
        let path = FieldPath::root().key("services").key(name.as_str());
        let prefixes: Vec<&str> = if service.path_prefixes.is_empty() {
            vec!["/"]
        } else {
            service.path_prefixes.iter().map(String::as_str).collect()
        };
        // The service's own name always routes to it.
        let mut hosts = vec![(name.as_str(), None)];
        for (i, host) in service.hosts.iter().enumerate() {
            if host != name && !hosts.iter().any(|(h, _)| h == host) {
                hosts.push((host.as_str(), Some(i)));
            }
        }
        for (host, index) in hosts {
            for &prefix in &prefixes {
                let Some(owner) = owners.get(&(host, prefix)).copied() else {
                    owners.insert((host, prefix), name.as_str());
                    continue;
                };
                let message = if service.path_prefixes.is_empty() {
                    format!("host {host:?} already routes to service `{owner}`; give one of them distinct `path_prefixes`")
                } else {
                    format!("host {host:?} with path prefix {prefix:?} already routes to service `{owner}`")
                };
                issues.push(match index {
                    Some(i) => Issue::at(path.key("hosts").index(i), message),
                    None => Issue::at_key(path.clone(), message),
                });
            }
        }
    }
}

fn check_limits(config: &Config, issues: &mut Vec<Issue>) {
    let upstream = FieldPath::root().key("upstream");
    if config.upstream.http2_connections_per_endpoint == 0 {
        issues.push(Issue::at(
            upstream.key("http2_connections_per_endpoint"),
            "http2_connections_per_endpoint must be at least 1",
        ));
    }
    if config.upstream.http2_streams_per_connection == 0 {
        issues.push(Issue::at(
            upstream.key("http2_streams_per_connection"),
            "http2_streams_per_connection must be at least 1",
        ));
    }
    let limits = FieldPath::root().key("limits");
    let upstream = FieldPath::root().key("upstream");
    let l = &config.limits;
    if l.max_connections == 0 {
        issues.push(Issue::at(
            limits.key("max_connections"),
            "must be at least 1",
        ));
    }
    if l.max_header_bytes < MIN_HEADER_BYTES {
        issues.push(Issue::at(
            limits.key("max_header_bytes"),
            format!(
                "must be at least {MIN_HEADER_BYTES} (hyper's smallest read buffer), got {}",
                l.max_header_bytes
            ),
        ));
    }
    if l.max_concurrent_streams == 0 {
        issues.push(Issue::at(
            limits.key("max_concurrent_streams"),
            "must be at least 1",
        ));
    }
    if l.header_read_timeout.is_zero() {
        issues.push(Issue::at(
            limits.key("header_read_timeout"),
            "must be longer than zero",
        ));
    }
    if config.upstream.connect_timeout.is_zero() {
        issues.push(Issue::at(
            upstream.key("connect_timeout"),
            "must be longer than zero",
        ));
    }
    if config.upstream.max_connecting_per_endpoint == 0 {
        issues.push(Issue::at(
            upstream.key("max_connecting_per_endpoint"),
            "must be at least 1",
        ));
    }
    if config.upstream.max_pending_per_endpoint == 0 {
        issues.push(Issue::at(
            upstream.key("max_pending_per_endpoint"),
            "must be at least 1",
        ));
    }
    if config.upstream.pending_timeout.is_zero() {
        issues.push(Issue::at(
            upstream.key("pending_timeout"),
            "must be longer than zero",
        ));
    }
}

fn check_log(config: &Config, issues: &mut Vec<Issue>) {
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&config.log.level) {
        issues.push(Issue::at(
            FieldPath::root().key("log").key("level"),
            format!("invalid log filter {:?}: {e}", config.log.level),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::{InboundSection, OutboundSection};
    use crate::core::protocol::UpstreamProtocol;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    fn service(endpoints: &[&str]) -> ServiceSection {
        ServiceSection {
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            ..ServiceSection::default()
        }
    }

    /// A valid config: inbound, outbound and one service.
    fn base() -> Config {
        let mut config: Config = serde_saphyr::from_str("{}").expect("defaults");
        config.inbound = Some(InboundSection {
            listen: addr("0.0.0.0:15006"),
            app: addr("127.0.0.1:8080").into(),
            protocol: UpstreamProtocol::Auto,
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
        config.outbound = Some(OutboundSection {
            listen: addr("127.0.0.1:15001"),
        });
        config
            .services
            .insert("orders".to_string(), service(&["10.0.0.1:80"]));
        config
    }

    fn messages(config: &Config) -> Vec<String> {
        validate(config)
            .into_iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect()
    }

    #[test]
    fn base_is_valid() {
        assert_eq!(messages(&base()), Vec::<String>::new());
    }

    #[test]
    fn empty_config_has_nothing_to_proxy() {
        let config: Config = serde_saphyr::from_str("{}").expect("defaults");
        assert!(messages(&config)[0].starts_with(": nothing to proxy"));
    }

    #[test]
    fn wildcard_and_specific_listeners_on_one_port_collide() {
        let mut config = base();
        config.admin.listen = addr("127.0.0.1:15006");
        assert_eq!(
            messages(&config),
            vec!["inbound.listen: listen address 0.0.0.0:15006 is already used by `admin.listen`"]
        );
    }

    #[test]
    fn port_zero_may_repeat() {
        let mut config = base();
        config.admin.listen = addr("127.0.0.1:0");
        if let Some(inbound) = config.inbound.as_mut() {
            inbound.listen = addr("127.0.0.1:0");
        }
        if let Some(outbound) = config.outbound.as_mut() {
            outbound.listen = addr("127.0.0.1:0");
        }
        assert_eq!(messages(&config), Vec::<String>::new());
    }

    #[test]
    fn endpoint_pointing_at_ourselves_is_a_loop() {
        let mut config = base();
        config
            .services
            .insert("self".to_string(), service(&["127.0.0.1:15001"]));
        assert_eq!(
            messages(&config),
            vec!["services.self.endpoints[0]: 127.0.0.1:15001 is remora's own listener `outbound.listen`: requests would loop"]
        );
    }

    #[test]
    fn names_are_checked_for_loops_only_as_localhost() {
        let mut config = base();
        config.services.insert(
            "named".to_string(),
            service(&["orders:15001", "localhost:15001", "orders:0"]),
        );
        assert_eq!(
            messages(&config),
            vec![
                "services.named.endpoints[1]: localhost:15001 is remora's own listener `outbound.listen`: requests would loop",
                "services.named.endpoints[2]: orders:0 is not a destination: it needs a non-zero port",
            ]
        );
    }

    #[test]
    fn service_without_endpoints_or_route_is_refused() {
        let mut config = base();
        config.outbound = None;
        config.services.insert("empty".to_string(), service(&[]));
        let found = messages(&config);
        assert!(
            found.iter().any(
                |m| m.starts_with("services.empty.endpoints: service `empty` has no endpoints")
            ),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|m| m.starts_with("services.orders: service `orders` is unreachable")),
            "{found:?}"
        );
    }

    #[test]
    fn hosts_are_normalised_then_checked_across_services() {
        let mut config = base();
        let mut other = service(&["10.0.0.2:80"]);
        other.hosts = vec!["Orders.".to_string()];
        config.services.insert("other".to_string(), other);
        normalize(&mut config);
        assert_eq!(config.services["other"].hosts, vec!["orders"]);
        assert_eq!(
            messages(&config),
            vec!["services.other.hosts[0]: host \"orders\" already routes to service `orders`; give one of them distinct `path_prefixes`"]
        );
    }

    #[test]
    fn distinct_prefixes_may_share_a_host() {
        let mut config = base();
        let mut v2 = service(&["10.0.0.2:80"]);
        v2.hosts = vec!["orders".to_string()];
        v2.path_prefixes = vec!["/v2".to_string()];
        config.services.insert("orders-v2".to_string(), v2.clone());
        assert_eq!(messages(&config), Vec::<String>::new());
        config.services.insert("orders-v2b".to_string(), v2);
        assert_eq!(
            messages(&config),
            vec!["services.orders-v2b.hosts[0]: host \"orders\" with path prefix \"/v2\" already routes to service `orders-v2`"]
        );
    }

    #[test]
    fn bad_names_hosts_and_prefixes() {
        let mut config = base();
        let mut bad = service(&["10.0.0.2:80"]);
        bad.hosts = vec!["http://x".to_string(), "a".to_string(), "a".to_string()];
        bad.path_prefixes = vec!["api".to_string()];
        config.services.insert("Bad Name".to_string(), bad);
        let found = messages(&config);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].starts_with("services.\"Bad Name\": invalid service name"));
        assert!(found[1].starts_with("services.\"Bad Name\".hosts[0]: invalid host"));
        assert!(found[2].ends_with("host \"a\" is listed twice"));
        assert!(found[3]
            .starts_with("services.\"Bad Name\".path_prefixes[0]: invalid path prefix \"api\""));
    }

    #[test]
    fn limits_have_floors() {
        let mut config = base();
        config.limits.max_connections = 0;
        config.limits.max_header_bytes = 1024;
        config.limits.max_concurrent_streams = 0;
        config.limits.header_read_timeout = std::time::Duration::ZERO;
        config.upstream.connect_timeout = std::time::Duration::ZERO;
        let found = messages(&config);
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(found[1].starts_with("limits.max_header_bytes: must be at least 8192"));
    }

    #[test]
    fn pending_queue_settings_have_floors() {
        let mut config = base();
        config.upstream.max_connecting_per_endpoint = 0;
        config.upstream.max_pending_per_endpoint = 0;
        config.upstream.pending_timeout = std::time::Duration::ZERO;
        let found = messages(&config);
        assert_eq!(
            found,
            [
                "upstream.max_connecting_per_endpoint: must be at least 1",
                "upstream.max_pending_per_endpoint: must be at least 1",
                "upstream.pending_timeout: must be longer than zero",
            ],
        );
    }

    #[test]
    fn log_filter_must_parse() {
        let mut config = base();
        config.log.level = "remora=loud".to_string();
        assert!(messages(&config)[0].starts_with("log.level: invalid log filter"));
    }
}
