//! Validation is building: every section of a decoded config goes through the same
//! conversion that starting it does, and a refusal is reported at its field.
//!
//! [`load`], [`parse`] and [`parse_with_env`] are the only ways a config enters
//! remora (`remora run`, `remora validate`, reload, the demo), so what one accepts the
//! others accept, and what a mechanism's constructor refuses is refused with file,
//! line, column and field, never at start-up without a location.

use std::path::Path;

use crate::config::{self, Config, ConfigError, EnvLookup, FieldPath, Issue};

use super::resolve::{self, BuildError};
use crate::policy::ServiceStack;

/// Reads, substitutes, parses, validates and builds-checks the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    config::load(path, &check)
}

/// Like [`load`], for text already read; `origin` names it in errors.
pub fn parse(origin: &str, text: &str) -> Result<Config, ConfigError> {
    config::parse(origin, text, &check)
}

/// Like [`parse`], with `${VAR}` looked up through `env`.
pub fn parse_with_env(origin: &str, text: &str, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
    config::parse_with_env(origin, text, env, &check)
}

/// Every section's conversion into the settings of what it configures; the refusals,
/// each at its field. What [`State::build`](super::state::State::build) converts when
/// the config starts, this converts too, without starting anything.
pub fn check(config: &Config) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut refused = |at: FieldPath, result: Result<(), BuildError>| {
        if let Err(error) = result {
            issues.push(Issue::at(at.join(&error.field), error.message));
        }
    };
    let root = FieldPath::root();
    let policies = &config.policies;
    let defined = root.key("policies");
    for name in policies.timeouts.keys() {
        let at = defined.key("timeouts").key(name);
        refused(at, resolve::timeout(policies, Some(name)).map(drop));
    }
    for (name, policy) in &policies.retries {
        refused(
            defined.key("retries").key(name),
            resolve::retry(policy).map(drop),
        );
    }
    for (name, policy) in &policies.breakers {
        refused(
            defined.key("breakers").key(name),
            resolve::breaker(policy).map(drop),
        );
    }
    for (name, policy) in &policies.rate_limits {
        let at = defined.key("rate_limits").key(name);
        refused(at, resolve::rate_limit(policy).map(drop));
    }
    for (name, policy) in &policies.faults {
        refused(
            defined.key("faults").key(name),
            resolve::fault(policy).map(drop),
        );
    }
    // A fallback's alternate is only looked up here: any stack stands in for a service
    // that exists.
    let alternate = |service: &str| {
        config
            .services
            .contains_key(service)
            .then(|| ServiceStack::new(tower::service_fn(refuse)))
    };
    for (name, policy) in &policies.fallbacks {
        let at = defined.key("fallbacks").key(name);
        refused(at, resolve::fallback(policy, alternate).map(drop));
    }
    for (name, registry) in &config.registries {
        let at = root.key("registries").key(name);
        refused(at, resolve::registry(registry).map(drop));
    }
    refused(
        root.key("resolver"),
        resolve::resolver(&config.resolver).map(drop),
    );
    // The sidecar's own credentials, read once: the mesh blocks of services use them.
    let own = match config.tls.as_ref().map(resolve::mesh_credentials) {
        Some(Ok(own)) => Some(own),
        Some(Err(error)) => {
            refused(root.key("tls"), Err(error));
            None
        }
        None => None,
    };
    for (name, service) in &config.services {
        let path = root.key("services").key(name);
        refused(
            path.key("balancer"),
            resolve::balancer(&service.balancer).map(drop),
        );
        if let Some(check) = &service.health_check {
            refused(
                path.key("health_check"),
                resolve::health_check(check).map(drop),
            );
        }
        if let Some(outlier) = &service.outlier_detection {
            let at = path.key("outlier_detection");
            refused(at, resolve::outlier(outlier).map(drop));
        }
        if service.protocol.is_tcp() {
            let tcp = resolve::tcp(service.tcp.as_ref(), &config.upstream, &config.limits);
            refused(path.key("tcp"), tcp.map(drop));
        }
        // A backend or mirror is only looked up here, as a fallback's alternate is.
        let known = |wanted: &str| config.services.contains_key(wanted).then_some(());
        let mirrors = crate::routing::MirrorMetrics::default();
        for (i, route) in service.routes.iter().enumerate() {
            let at = path.key("routes").index(i);
            refused(
                at.key("match"),
                resolve::route_match(&route.matches).map(drop),
            );
            refused(
                at,
                resolve::route_action(name, route, &known, &mirrors).map(drop),
            );
        }
        // A mesh block without credentials is the document's own issue (reported once).
        let Some(tls) = service
            .tls
            .as_ref()
            .filter(|tls| !tls.mesh || own.is_some())
        else {
            continue;
        };
        let lookup = service.discovery.as_ref().and_then(|d| d.name.as_deref());
        let service_tls = resolve::ServiceTls {
            service: name,
            section: Some(tls),
            discovery_name: lookup.unwrap_or(name),
            discovered: service.discovery.is_some(),
            endpoint_host: resolve::sole_endpoint_host(&service.endpoints),
        };
        refused(
            path.key("tls"),
            resolve::endpoint_tls(&service_tls, own.as_ref()).map(drop),
        );
    }
    if let Some(inbound) = config.inbound.as_ref().filter(|i| i.protocol.is_tcp()) {
        let tcp = resolve::tcp(inbound.tcp.as_ref(), &config.upstream, &config.limits);
        refused(root.key("inbound").key("tcp"), tcp.map(drop));
    }
    refused(root.key("tracing"), resolve::tracing(config).map(drop));
    if let Some(credentials) = &own {
        let material = credentials.current();
        let own_domain = material.identity().map(|id| id.trust_domain());
        if let (Some(inbound), Some(own_domain)) = (&config.inbound, own_domain) {
            let at = root.key("inbound");
            refused(at, resolve::authorization(inbound, own_domain).map(drop));
        }
    }
    issues
}

/// The stand-in alternate of a fallback under validation: never called.
async fn refuse(
    _: http::Request<crate::core::body::ProxyBody>,
) -> Result<http::Response<crate::core::body::ProxyBody>, crate::core::error::ProxyError> {
    Err(crate::core::error::ProxyError::UnknownDestination(
        "validation stand-in".into(),
    ))
}
