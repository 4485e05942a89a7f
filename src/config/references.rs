//! Every reference to a policy, and to a service from a fallback, names one that exists
//! (a typo gets the closest name). Whether each policy makes sense on its own is not
//! checked here: the build floor converts it with its layer's own constructor, at
//! validation as at start, so the rule lives in one place.

use super::error::{closest, FieldPath};
use super::policies::PoliciesSection;
use super::schema::Config;
use super::validate::Issue;
use super::{RouteMatch, RouteSection};
use crate::core::labels::DEFAULT_ROUTE;

/// Every problem with the policies and their references.
pub(crate) fn check(config: &Config, issues: &mut Vec<Issue>) {
    let policies = &config.policies;
    check_fallback_targets(config, issues);
    if let Some(inbound) = &config.inbound {
        let path = FieldPath::root().key("inbound");
        check_timeout(policies, &path, inbound.timeout.as_deref(), issues);
        check_ref(
            &path.key("rate_limit"),
            inbound.rate_limit.as_deref(),
            "rate limit",
            names(&policies.rate_limits),
            issues,
        );
        check_ref(
            &path.key("fallback"),
            inbound.fallback.as_deref(),
            "fallback",
            names(&policies.fallbacks),
            issues,
        );
        check_ref(
            &path.key("fault"),
            inbound.fault.as_deref(),
            "fault",
            names(&policies.faults),
            issues,
        );
        check_in_flight(&path, inbound.max_in_flight, issues);
    }
    for (name, service) in &config.services {
        let path = FieldPath::root().key("services").key(name);
        check_timeout(policies, &path, service.timeout.as_deref(), issues);
        check_ref(
            &path.key("retry"),
            service.retry.as_deref(),
            "retry policy",
            names(&policies.retries),
            issues,
        );
        check_ref(
            &path.key("breaker"),
            service.breaker.as_deref(),
            "breaker",
            names(&policies.breakers),
            issues,
        );
        check_ref(
            &path.key("endpoint_breaker"),
            service.endpoint_breaker.as_deref(),
            "breaker",
            names(&policies.breakers),
            issues,
        );
        check_ref(
            &path.key("rate_limit"),
            service.rate_limit.as_deref(),
            "rate limit",
            names(&policies.rate_limits),
            issues,
        );
        check_ref(
            &path.key("fallback"),
            service.fallback.as_deref(),
            "fallback",
            names(&policies.fallbacks),
            issues,
        );
        check_ref(
            &path.key("fault"),
            service.fault.as_deref(),
            "fault",
            names(&policies.faults),
            issues,
        );
        check_in_flight(&path, service.max_in_flight, issues);
        for (i, route) in service.routes.iter().enumerate() {
            check_route(policies, &path.key("routes").index(i), route, issues);
        }
        check_route_names(&path.key("routes"), &service.routes, issues);
    }
}

fn names<V>(map: &std::collections::BTreeMap<String, V>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

/// `none` switches a policy off on a route.
const NONE: &str = "none";

fn check_ref(
    path: &FieldPath,
    name: Option<&str>,
    kind: &str,
    defined: Vec<&str>,
    issues: &mut Vec<Issue>,
) {
    let Some(name) = name else { return };
    if name == NONE || defined.contains(&name) {
        return;
    }
    let mut message = format!("unknown {kind} `{name}`");
    if let Some(close) = closest(name, &defined) {
        message.push_str(&format!(", did you mean `{close}`?"));
    }
    if defined.is_empty() {
        message.push_str(" (none is defined under `policies`)");
    } else {
        message.push_str(&format!(" (defined: {})", defined.join(", ")));
    }
    issues.push(Issue::at(path.clone(), message));
}

/// A timeout reference is a `policies.timeouts` name or a duration written in place.
fn check_timeout(
    policies: &PoliciesSection,
    path: &FieldPath,
    value: Option<&str>,
    issues: &mut Vec<Issue>,
) {
    let Some(value) = value else { return };
    if value.starts_with(|c: char| c.is_ascii_digit()) {
        match super::scalar::parse_duration(value) {
            Ok(duration) if duration.is_zero() => issues.push(Issue::at(
                path.key("timeout"),
                "a timeout must be longer than zero",
            )),
            Ok(_) => {}
            Err(message) => issues.push(Issue::at(path.key("timeout"), message)),
        }
        return;
    }
    check_ref(
        &path.key("timeout"),
        Some(value),
        "timeout",
        names(&policies.timeouts),
        issues,
    );
}

fn check_in_flight(path: &FieldPath, value: Option<usize>, issues: &mut Vec<Issue>) {
    if value == Some(0) {
        issues.push(Issue::at(
            path.key("max_in_flight"),
            "max_in_flight must be at least 1",
        ));
    }
}

/// Each route's label (its `name`, or its match text) is its own: two routes, or a route
/// and the requests no route takes, never count into one series unnoticed.
fn check_route_names(path: &FieldPath, routes: &[RouteSection], issues: &mut Vec<Issue>) {
    for (i, route) in routes.iter().enumerate() {
        let label = route.label();
        if label.is_empty() && route.name.is_none() {
            continue; // asked for a `name` by the route's own check
        }
        let name_path = path.index(i).key("name");
        if route.name.is_some() && (label.is_empty() || label == DEFAULT_ROUTE) {
            issues.push(Issue::at(
                name_path,
                format!("invalid route name {label:?}: it must be non-empty and not `{DEFAULT_ROUTE}` (the label of requests no route takes)"),
            ));
            continue;
        }
        if let Some(first) = routes[..i].iter().position(|r| r.label() == label) {
            issues.push(Issue::at(
                name_path,
                format!("routes[{first}] already has the label {label:?}: give this route a `name` of its own"),
            ));
        }
    }
}

fn check_route(
    policies: &PoliciesSection,
    path: &FieldPath,
    route: &RouteSection,
    issues: &mut Vec<Issue>,
) {
    super::route_match::check(&path.key("match"), &route.matches, issues);
    super::route_action::check(path, route, issues);
    check_timeout(
        policies,
        path,
        route.timeout.as_deref().filter(|t| *t != NONE),
        issues,
    );
    check_ref(
        &path.key("retry"),
        route.retry.as_deref(),
        "retry policy",
        names(&policies.retries),
        issues,
    );
    check_ref(
        &path.key("rate_limit"),
        route.rate_limit.as_deref(),
        "rate limit",
        names(&policies.rate_limits),
        issues,
    );
    check_ref(
        &path.key("fallback"),
        route.fallback.as_deref(),
        "fallback",
        names(&policies.fallbacks),
        issues,
    );
    check_ref(
        &path.key("fault"),
        route.fault.as_deref(),
        "fault",
        names(&policies.faults),
        issues,
    );
}

/// A route match names exactly one well-formed thing: a path prefix, a gRPC method or a
/// gRPC service.
pub(crate) fn check_route_match(
    match_path: &FieldPath,
    matches: &RouteMatch,
    issues: &mut Vec<Issue>,
) {
    let given = [
        matches.path_prefix.is_some(),
        matches.grpc_method.is_some(),
        matches.grpc_service.is_some(),
    ]
    .iter()
    .filter(|given| **given)
    .count();
    if given != 1 {
        issues.push(Issue::at(
            match_path.clone(),
            "a route matches on exactly one of `path_prefix`, `grpc_method`, `grpc_service`",
        ));
    }
    if let Some(prefix) = &matches.path_prefix {
        if !prefix.starts_with('/') {
            issues.push(Issue::at(
                match_path.key("path_prefix"),
                format!("invalid path prefix {prefix:?}: it must start with `/`"),
            ));
        }
    }
    if let Some(method) = &matches.grpc_method {
        let valid = method.split_once('/').is_some_and(|(service, method)| {
            !service.is_empty() && !method.is_empty() && !method.contains('/')
        });
        if !valid {
            issues.push(Issue::at(
                match_path.key("grpc_method"),
                format!("invalid gRPC method {method:?}: write it `package.Service/Method`"),
            ));
        }
    }
    if let Some(service) = &matches.grpc_service {
        if service.is_empty() || service.contains('/') {
            issues.push(Issue::at(
                match_path.key("grpc_service"),
                format!("invalid gRPC service {service:?}: write it `package.Service`"),
            ));
        }
    }
}

/// A fallback's `forward_to` names a service of the config.
fn check_fallback_targets(config: &Config, issues: &mut Vec<Issue>) {
    let services: Vec<&str> = config.services.keys().map(String::as_str).collect();
    let root = FieldPath::root().key("policies").key("fallbacks");
    for (name, fallback) in &config.policies.fallbacks {
        if let Some(target) = &fallback.forward_to {
            check_ref(
                &root.key(name).key("forward_to"),
                Some(target),
                "service",
                services.clone(),
                issues,
            );
        }
    }
}
