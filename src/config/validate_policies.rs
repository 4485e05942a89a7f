//! Semantic checks of the `policies:` section and of every reference to a policy.
//!
//! A reference names a policy that must exist (a typo gets the closest name); each
//! policy must make sense on its own (a backoff whose maximum is below its base, a
//! breaker that can never trip, a fallback with no action or two).

use super::error::{closest, FieldPath};
use super::policies::{FallbackPolicy, PoliciesConfig, RouteConfig};
use super::schema::Config;
use super::validate::Issue;
use crate::core::labels::DEFAULT_ROUTE;

/// Every problem with the policies and their references.
pub(crate) fn check(config: &Config, issues: &mut Vec<Issue>) {
    let policies = &config.policies;
    check_definitions(config, issues);
    check_tracing(config, issues);
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
    policies: &PoliciesConfig,
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
fn check_route_names(path: &FieldPath, routes: &[RouteConfig], issues: &mut Vec<Issue>) {
    for (i, route) in routes.iter().enumerate() {
        let label = route.label();
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
    policies: &PoliciesConfig,
    path: &FieldPath,
    route: &RouteConfig,
    issues: &mut Vec<Issue>,
) {
    let matches = &route.matches;
    let given = [
        matches.path_prefix.is_some(),
        matches.grpc_method.is_some(),
        matches.grpc_service.is_some(),
    ]
    .iter()
    .filter(|given| **given)
    .count();
    let match_path = path.key("match");
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

fn check_definitions(config: &Config, issues: &mut Vec<Issue>) {
    let policies = &config.policies;
    let root = FieldPath::root().key("policies");
    for (name, timeout) in &policies.timeouts {
        if timeout.0.is_zero() {
            issues.push(Issue::at(
                root.key("timeouts").key(name),
                "a timeout must be longer than zero",
            ));
        }
    }
    for (name, retry) in &policies.retries {
        let path = root.key("retries").key(name);
        if retry.attempts == 0 {
            issues.push(Issue::at(
                path.key("attempts"),
                "attempts counts the first call too: at least 1",
            ));
        }
        if retry.backoff.max < retry.backoff.base {
            issues.push(Issue::at(
                path.key("backoff").key("max"),
                "the backoff maximum must be at least its base",
            ));
        }
        if retry.per_try_timeout.is_some_and(|t| t.is_zero()) {
            issues.push(Issue::at(
                path.key("per_try_timeout"),
                "per_try_timeout must be longer than zero",
            ));
        }
        if retry.budget.window.is_zero() {
            issues.push(Issue::at(
                path.key("budget").key("window"),
                "the budget window must be longer than zero",
            ));
        }
    }
    for (name, breaker) in &policies.breakers {
        let path = root.key("breakers").key(name);
        if breaker.consecutive_failures.is_none() && breaker.failure_rate.is_none() {
            issues.push(Issue::at(
                path.clone(),
                "a breaker needs `consecutive_failures` or `failure_rate` to ever open",
            ));
        }
        if breaker.consecutive_failures == Some(0) {
            issues.push(Issue::at(
                path.key("consecutive_failures"),
                "consecutive_failures must be at least 1",
            ));
        }
        if let Some(rate) = &breaker.failure_rate {
            if rate.threshold.0 <= 0.0 {
                issues.push(Issue::at(
                    path.key("failure_rate").key("threshold"),
                    "the threshold must be above 0%",
                ));
            }
            if rate.min_requests == 0 {
                issues.push(Issue::at(
                    path.key("failure_rate").key("min_requests"),
                    "min_requests must be at least 1",
                ));
            }
            if rate.window.is_zero() {
                issues.push(Issue::at(
                    path.key("failure_rate").key("window"),
                    "the window must be longer than zero",
                ));
            }
        }
        if breaker.open_for.is_zero() {
            issues.push(Issue::at(
                path.key("open_for"),
                "open_for must be longer than zero",
            ));
        }
        if breaker.max_open_for < breaker.open_for {
            issues.push(Issue::at(
                path.key("max_open_for"),
                "max_open_for must be at least open_for",
            ));
        }
        if breaker.half_open_requests == 0 {
            issues.push(Issue::at(
                path.key("half_open_requests"),
                "half_open_requests must be at least 1",
            ));
        }
        if breaker.failure_on.is_empty() {
            issues.push(Issue::at(
                path.key("failure_on"),
                "name at least one failure condition",
            ));
        }
    }
    for (name, limit) in &policies.rate_limits {
        if limit.burst == Some(0) {
            issues.push(Issue::at(
                root.key("rate_limits").key(name).key("burst"),
                "burst must be at least 1",
            ));
        }
    }
    for (name, fallback) in &policies.fallbacks {
        check_fallback(config, &root.key("fallbacks").key(name), fallback, issues);
    }
    for (name, fault) in &policies.faults {
        let path = root.key("faults").key(name);
        if fault.delay.is_none() && fault.abort.is_none() {
            issues.push(Issue::at(
                path.clone(),
                "a fault needs `delay`, `abort` or both",
            ));
        }
        if let Some(abort) = &fault.abort {
            if !(400..=599).contains(&abort.status) {
                issues.push(Issue::at(
                    path.key("abort").key("status"),
                    format!(
                        "abort status {} is not an error: use 400 to 599",
                        abort.status
                    ),
                ));
            }
        }
    }
}

fn check_fallback(
    config: &Config,
    path: &FieldPath,
    fallback: &FallbackPolicy,
    issues: &mut Vec<Issue>,
) {
    if fallback.on.is_empty() {
        issues.push(Issue::at(path.key("on"), "name at least one trigger"));
    }
    let actions = [
        fallback.respond.is_some(),
        fallback.forward_to.is_some(),
        fallback.stale.is_some(),
    ]
    .iter()
    .filter(|given| **given)
    .count();
    if actions != 1 {
        issues.push(Issue::at(
            path.clone(),
            "a fallback takes exactly one action: `respond`, `forward_to` or `stale`",
        ));
    }
    if let Some(target) = &fallback.forward_to {
        let services: Vec<&str> = config.services.keys().map(String::as_str).collect();
        check_ref(
            &path.key("forward_to"),
            Some(target),
            "service",
            services,
            issues,
        );
    }
    if let Some(respond) = &fallback.respond {
        let respond_path = path.key("respond");
        if http::StatusCode::from_u16(respond.status).is_err() || respond.status < 200 {
            issues.push(Issue::at(
                respond_path.key("status"),
                format!("invalid status {}: use 200 to 599", respond.status),
            ));
        }
        for (name, value) in &respond.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                issues.push(Issue::at(
                    respond_path.key("headers").key(name),
                    format!("invalid header {name}: {value:?}"),
                ));
            }
        }
        if let Some(reply) = &respond.grpc_reply_base64 {
            use base64::Engine as _;
            if base64::engine::general_purpose::STANDARD
                .decode(reply.trim())
                .is_err()
            {
                issues.push(Issue::at(
                    respond_path.key("grpc_reply_base64"),
                    "not valid base64",
                ));
            }
            if respond
                .grpc_status
                .is_some_and(|code| code.0 != tonic::Code::Ok)
            {
                issues.push(Issue::at(
                    respond_path.key("grpc_status"),
                    "a gRPC reply message goes with status `ok`",
                ));
            }
        }
    }
    if let Some(stale) = &fallback.stale {
        if stale.max_entries == 0 {
            issues.push(Issue::at(
                path.key("stale").key("max_entries"),
                "max_entries must be at least 1",
            ));
        }
    }
}

fn check_tracing(config: &Config, issues: &mut Vec<Issue>) {
    let tracing = &config.tracing;
    let path = FieldPath::root().key("tracing");
    if let Some(endpoint) = &tracing.endpoint {
        let valid = endpoint.parse::<http::Uri>().is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
        });
        if !valid {
            issues.push(Issue::at(
                path.key("endpoint"),
                format!(
                    "invalid collector address {endpoint:?}: write it like `http://127.0.0.1:4317`"
                ),
            ));
        }
    }
    if tracing.queue_size == 0 {
        issues.push(Issue::at(
            path.key("queue_size"),
            "queue_size must be at least 1",
        ));
    }
    if tracing.batch_size == 0 || tracing.batch_size > tracing.queue_size {
        issues.push(Issue::at(
            path.key("batch_size"),
            "batch_size must be at least 1 and at most queue_size",
        ));
    }
    if tracing.export_timeout.is_zero() {
        issues.push(Issue::at(
            path.key("export_timeout"),
            "export_timeout must be longer than zero",
        ));
    }
}
