//! The YAML of TCP passthrough: `protocol: tcp` on a service (its own `listen` port
//! forwards raw TCP to its endpoints) or on `inbound` (the inbound listener forwards raw
//! TCP to the app), the `tcp:` block that tunes either, and the checks that refuse what
//! only HTTP has (routes, timeouts, retries, host names...), so nothing written is
//! silently ignored.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::FieldPath;
use super::schema::{Config, InboundSection, ServiceSection};
use super::validate::Issue;

/// How a TCP listener treats its connections.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSection {
    /// A connection whose two directions were both quiet this long is closed.
    #[serde(default = "default_idle_timeout", with = "super::scalar::duration")]
    pub idle_timeout: Duration,
    /// Most connections open at once on the listener; more are closed at accept
    /// (default: `limits.max_connections`).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Endpoints tried, each a different one, before a client connection is given up
    /// when connecting fails (connect refused, timed out, TLS handshake failed).
    #[serde(default = "default_connect_attempts")]
    pub connect_attempts: u32,
}

impl Default for TcpSection {
    fn default() -> Self {
        Self {
            idle_timeout: default_idle_timeout(),
            max_connections: None,
            connect_attempts: default_connect_attempts(),
        }
    }
}

/// An hour: long enough for a pooled database or cache connection that waits between
/// bursts, short enough that connections whose peer vanished do not pile up forever.
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60 * 60)
}

fn default_connect_attempts() -> u32 {
    3
}

/// The fields of a service that only HTTP gives a meaning to.
fn http_only_service_fields(service: &ServiceSection) -> Vec<&'static str> {
    let mut written = Vec::new();
    let mut note = |set: bool, name: &'static str| {
        if set {
            written.push(name);
        }
    };
    note(!service.hosts.is_empty(), "hosts");
    note(!service.path_prefixes.is_empty(), "path_prefixes");
    note(!service.routes.is_empty(), "routes");
    note(service.timeout.is_some(), "timeout");
    note(service.retry.is_some(), "retry");
    note(service.breaker.is_some(), "breaker");
    note(service.endpoint_breaker.is_some(), "endpoint_breaker");
    note(service.rate_limit.is_some(), "rate_limit");
    note(service.max_in_flight.is_some(), "max_in_flight");
    note(service.fallback.is_some(), "fallback");
    note(service.fault.is_some(), "fault");
    written
}

/// The fields of `inbound` that only HTTP gives a meaning to.
fn http_only_inbound_fields(inbound: &InboundSection) -> Vec<&'static str> {
    let mut written = Vec::new();
    let mut note = |set: bool, name: &'static str| {
        if set {
            written.push(name);
        }
    };
    note(inbound.timeout.is_some(), "timeout");
    note(inbound.rate_limit.is_some(), "rate_limit");
    note(inbound.max_in_flight.is_some(), "max_in_flight");
    note(inbound.fallback.is_some(), "fallback");
    note(inbound.fault.is_some(), "fault");
    note(!inbound.authorize.is_empty(), "authorize");
    written
}

/// The document's TCP rules: a TCP service has its own port and nothing HTTP; a `tcp`
/// block goes with `protocol: tcp`; no fallback forwards HTTP calls to a TCP service.
pub(super) fn check(config: &Config, issues: &mut Vec<Issue>) {
    let services = FieldPath::root().key("services");
    for (name, service) in &config.services {
        let path = services.key(name);
        if !service.protocol.is_tcp() {
            if service.tcp.is_some() {
                issues.push(Issue::at(path.key("tcp"), NOT_TCP));
            }
            continue;
        }
        if service.listen.is_none() {
            issues.push(Issue::at(
                path.key("protocol"),
                format!(
                    "a `protocol: tcp` service is reached on its own port only: give \
                     service `{name}` a `listen` address"
                ),
            ));
        }
        for field in http_only_service_fields(service) {
            issues.push(Issue::at(path.key(field), http_only(field)));
        }
    }
    if let Some(inbound) = &config.inbound {
        let path = FieldPath::root().key("inbound");
        if !inbound.protocol.is_tcp() {
            if inbound.tcp.is_some() {
                issues.push(Issue::at(path.key("tcp"), NOT_TCP));
            }
        } else {
            for field in http_only_inbound_fields(inbound) {
                issues.push(Issue::at(path.key(field), http_only(field)));
            }
        }
    }
    let fallbacks = FieldPath::root().key("policies").key("fallbacks");
    for (name, fallback) in &config.policies.fallbacks {
        let Some(target) = &fallback.forward_to else {
            continue;
        };
        if config
            .services
            .get(target)
            .is_some_and(|service| service.protocol.is_tcp())
        {
            issues.push(Issue::at(
                fallbacks.key(name).key("forward_to"),
                format!("service `{target}` is `protocol: tcp`: it takes no HTTP calls"),
            ));
        }
    }
}

const NOT_TCP: &str = "a `tcp` block applies to `protocol: tcp` only";

fn http_only(field: &str) -> String {
    format!("`{field}` is HTTP only: a `protocol: tcp` listener passes bytes through, with no requests to apply it to")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::UpstreamProtocol;

    fn tcp_service() -> ServiceSection {
        ServiceSection {
            protocol: UpstreamProtocol::Tcp,
            listen: Some("127.0.0.1:16379".parse().unwrap()),
            endpoints: vec!["127.0.0.1:6379".parse().unwrap()],
            ..ServiceSection::default()
        }
    }

    fn issues_of(config: &Config) -> Vec<String> {
        let mut issues = Vec::new();
        check(config, &mut issues);
        issues
            .into_iter()
            .map(|issue| format!("{}: {}", issue.path, issue.message))
            .collect()
    }

    fn config_with(service: ServiceSection) -> Config {
        let mut config: Config = serde_saphyr::from_str("{}").unwrap();
        config.services.insert("cache".into(), service);
        config
    }

    #[test]
    fn a_tcp_service_with_its_own_port_and_nothing_http_passes() {
        assert!(issues_of(&config_with(tcp_service())).is_empty());
    }

    #[test]
    fn http_only_fields_and_a_missing_port_are_refused_at_their_field() {
        let service = ServiceSection {
            listen: None,
            retry: Some("default".into()),
            hosts: vec!["cache.local".into()],
            ..tcp_service()
        };
        let issues = issues_of(&config_with(service));
        assert_eq!(issues.len(), 3, "{issues:?}");
        assert!(
            issues[0].starts_with("services.cache.protocol: "),
            "{issues:?}"
        );
        assert!(issues[1].starts_with("services.cache.hosts: `hosts` is HTTP only"));
        assert!(issues[2].starts_with("services.cache.retry: `retry` is HTTP only"));
    }

    #[test]
    fn a_tcp_block_without_protocol_tcp_is_refused() {
        let service = ServiceSection {
            protocol: UpstreamProtocol::Http1,
            tcp: Some(TcpSection::default()),
            ..tcp_service()
        };
        let issues = issues_of(&config_with(service));
        assert_eq!(issues, [format!("services.cache.tcp: {NOT_TCP}")]);
    }
}
