//! Request -> service: which configured service a request is for.
//!
//! Inbound traffic always goes to the local app. Outbound traffic arrives either on a
//! service's dedicated port (the port decides) or on the shared outbound port, where the
//! `Host` / `:authority` name (port stripped, case-folded) and the longest matching path
//! prefix decide. Anything else is refused: remora is never an open proxy.
//!
//! Within a service, [`Target::route_for`] picks the configured route (a matcher of
//! path, method, headers and query; policies and an action of its own; a `route`
//! metrics label) a request takes, or the default one.

use std::collections::HashMap;
use std::sync::Arc;

use http::Request;

use super::stack::ServiceStacks;
use crate::balance::EndpointSet;
use crate::build::metrics::{RouteMetrics, ServiceMetrics};
use crate::core::labels::DEFAULT_ROUTE;
use crate::policy::Stack;
use crate::routing::{by_precedence, RequestMatcher, RouteAction};

/// A service as the request path sees it: where to send and how.
pub struct Target {
    /// The service's configured name (also its metrics label).
    pub name: Arc<str>,
    /// Its endpoints, kept current by discovery.
    pub endpoints: Arc<EndpointSet>,
    /// The route of requests no configured route takes ([`DEFAULT_ROUTE`]).
    default: Route,
    /// Configured routes, most specific first ([`by_precedence`]): the first that
    /// matches is the one a request takes.
    routes: Vec<(RequestMatcher, Route)>,
    /// The headers some route requires (at most 64), each looked up once per request.
    required_headers: Vec<http::HeaderName>,
    /// For each route, the bits of `required_headers` it requires: a route whose bits a
    /// request lacks is passed over without testing it.
    requires: Vec<u64>,
    /// Its latency handle, looked up once per config.
    pub metrics: ServiceMetrics,
}

/// One way through a service: a configured route, or the default one.
pub struct Route {
    /// The stack its requests go through.
    pub stack: Stack,
    /// Its `route` label and request counters.
    pub metrics: RouteMetrics,
    /// What it does besides sending through `stack`; `None` costs nothing.
    pub action: Option<RouteAction<Stack>>,
}

/// Which route of a [`Target`] took a request: small and `Copy`, so that a response body
/// can keep it until its request is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteId(Option<usize>);

impl Target {
    /// A target with its stacks.
    pub fn new(name: Arc<str>, endpoints: Arc<EndpointSet>, stacks: ServiceStacks) -> Self {
        let mut routes: Vec<_> = stacks
            .routes
            .into_iter()
            .map(|route| {
                let mut built = Route::new(route.stack, route.label);
                built.action = route.action;
                (route.matcher, built)
            })
            .collect();
        by_precedence(&mut routes);
        let mut required_headers: Vec<http::HeaderName> = Vec::new();
        for (matcher, _) in &routes {
            for name in matcher.required_headers() {
                if !required_headers.contains(name) && required_headers.len() < 64 {
                    required_headers.push(name.clone());
                }
            }
        }
        let requires = routes
            .iter()
            .map(|(matcher, _)| {
                matcher.required_headers().fold(0u64, |bits, name| {
                    match required_headers.iter().position(|known| known == name) {
                        Some(i) => bits | 1 << i,
                        None => bits,
                    }
                })
            })
            .collect();
        Self {
            name,
            endpoints,
            default: Route::new(stacks.default, Arc::from(DEFAULT_ROUTE)),
            routes,
            required_headers,
            requires,
            metrics: Default::default(),
        }
    }

    /// The route `request` takes: the most specific configured one that matches, else
    /// the default.
    ///
    /// NOTE: a walk over the sorted routes, cheapest conditions first within each
    /// (the headers every route requires, looked up once per request; then method,
    /// path, headers, query); no allocation. One prefix route costs what the
    /// path-only matcher did. A request that passes over 100 routes with header and
    /// regex conditions pays 100 method/path checks plus the header lookups and lazy-DFA
    /// runs of those whose path matched: a few microseconds at worst, expected to be a
    /// few percent of a proxied call; an index by exact path or first segment is the
    /// next step if the benchmark says otherwise.
    pub fn route_for<B>(&self, request: &Request<B>) -> RouteId {
        if self.required_headers.is_empty() {
            return RouteId(
                self.routes
                    .iter()
                    .position(|(matcher, _)| matcher.matches(request)),
            );
        }
        // Each header some route requires, looked up once for all of them.
        let headers = request.headers();
        let present = self
            .required_headers
            .iter()
            .enumerate()
            .fold(0u64, |bits, (i, name)| {
                if headers.contains_key(name) {
                    bits | 1 << i
                } else {
                    bits
                }
            });
        RouteId(
            self.routes
                .iter()
                .zip(&self.requires)
                .position(|((matcher, _), requires)| {
                    requires & !present == 0 && matcher.matches(request)
                }),
        )
    }

    /// The route `id` names.
    pub fn route(&self, id: RouteId) -> &Route {
        id.0.and_then(|i| self.routes.get(i))
            .map_or(&self.default, |(_, route)| route)
    }
}

impl Route {
    fn new(stack: Stack, label: Arc<str>) -> Self {
        Self {
            stack,
            metrics: RouteMetrics::new(label),
            action: None,
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// One path prefix of one host on the shared outbound port.
#[derive(Debug)]
struct PrefixRoute {
    /// Path prefix; empty matches every path.
    prefix: String,
    target: Arc<Target>,
}

/// Routing for the shared outbound port and the dedicated service ports.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Host name -> prefixes, longest first.
    hosts: HashMap<String, Vec<PrefixRoute>>,
    /// Service name -> target, for dedicated ports.
    services: HashMap<Arc<str>, Arc<Target>>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `target`, reachable by its name and `hosts`, limited to `prefixes` when any.
    pub fn insert(&mut self, target: Arc<Target>, hosts: &[String], prefixes: &[String]) {
        let names = std::iter::once(target.name.to_string()).chain(hosts.iter().cloned());
        for host in names {
            let routes = self.hosts.entry(host.to_ascii_lowercase()).or_default();
            if prefixes.is_empty() {
                routes.push(PrefixRoute {
                    prefix: String::new(),
                    target: target.clone(),
                });
            }
            for prefix in prefixes {
                routes.push(PrefixRoute {
                    prefix: prefix.trim_end_matches('/').to_string(),
                    target: target.clone(),
                });
            }
            routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        }
        self.services.insert(target.name.clone(), target);
    }

    /// The service configured under `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<Target>> {
        self.services.get(name)
    }

    /// The service for a request on the shared outbound port.
    pub fn route<B>(&self, request: &Request<B>) -> Result<&Arc<Target>, String> {
        let Some(host) = destination_host(request) else {
            return Err(String::new());
        };
        let path = request.uri().path();
        let routes = match self.hosts.get(host) {
            Some(routes) => routes,
            None if host.bytes().any(|b| b.is_ascii_uppercase()) => {
                match self.hosts.get(&host.to_ascii_lowercase()) {
                    Some(routes) => routes,
                    None => return Err(host.to_string()),
                }
            }
            None => return Err(host.to_string()),
        };
        routes
            .iter()
            .find(|route| prefix_matches(&route.prefix, path))
            .map(|route| &route.target)
            .ok_or_else(|| format!("{host}{path}"))
    }
}

/// The host a request names, without port: `:authority` for HTTP/2, `Host` for HTTP/1.
fn destination_host<B>(request: &Request<B>) -> Option<&str> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(authority))
}

/// `orders:80` -> `orders`, `[::1]:80` -> `[::1]`.
fn strip_port(authority: &str) -> &str {
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => &authority[..colon],
        _ => authority,
    }
}

/// Segment-aware prefix match: `/api` matches `/api` and `/api/x`, not `/apiary`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> Arc<Target> {
        let endpoints = Arc::new(EndpointSet::new());
        let clients =
            crate::upstream::UpstreamClients::new(crate::build::resolve::pool(&Default::default()));
        let forward = crate::upstream::Forward::new(
            name.into(),
            endpoints.clone(),
            crate::config::UpstreamProtocol::Auto,
            clients,
        );
        let stacks = ServiceStacks {
            default: crate::policy::bare(forward),
            routes: Vec::new(),
        };
        Arc::new(Target::new(name.into(), endpoints, stacks))
    }

    fn request(host: &str, path: &str) -> Request<()> {
        Request::builder()
            .uri(path)
            .header("host", host)
            .body(())
            .unwrap()
    }

    fn routed(table: &RouteTable, host: &str, path: &str) -> Option<String> {
        table
            .route(&request(host, path))
            .ok()
            .map(|t| t.name.to_string())
    }

    #[test]
    fn routes_by_name_alias_and_port_case_insensitively() {
        let mut table = RouteTable::new();
        table.insert(target("orders"), &["orders.internal".into()], &[]);
        assert_eq!(routed(&table, "orders", "/x").as_deref(), Some("orders"));
        assert_eq!(routed(&table, "orders:80", "/").as_deref(), Some("orders"));
        assert_eq!(
            routed(&table, "Orders.Internal", "/").as_deref(),
            Some("orders")
        );
        assert_eq!(routed(&table, "payments", "/"), None);
    }

    #[test]
    fn longest_prefix_wins_and_prefixes_respect_segments() {
        let mut table = RouteTable::new();
        table.insert(target("api"), &["gw".into()], &["/".into()]);
        table.insert(target("users"), &["gw".into()], &["/users".into()]);
        assert_eq!(routed(&table, "gw", "/users/7").as_deref(), Some("users"));
        assert_eq!(routed(&table, "gw", "/users").as_deref(), Some("users"));
        assert_eq!(routed(&table, "gw", "/usersx").as_deref(), Some("api"));
    }

    #[test]
    fn strips_ports_but_not_ipv6_brackets() {
        assert_eq!(strip_port("a:1"), "a");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("a"), "a");
    }
}
