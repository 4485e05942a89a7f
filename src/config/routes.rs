//! The YAML schema of a service's routes: which requests a route takes
//! ([`RequestMatch`], `config/route_match.rs`), what it does with them (its action,
//! `config/route_action.rs`), and the policies that replace the service's for them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::route_action::{
    DirectResponseSection, HeaderEditsSection, MirrorSection, RedirectSection, RewriteSection,
};
pub use super::route_match::{HeaderMatchSection, QueryMatchSection, RequestMatch};

/// Requests picked by their path, method, headers or query, with an action and policies
/// of their own.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The route's `route` label in metrics; by default its path match as written.
    #[serde(default)]
    pub name: Option<String>,
    /// Which requests the route takes.
    #[serde(rename = "match")]
    pub matches: RequestMatch,
    /// Services the route's requests are split over, by weight; the service's own name
    /// is its own endpoints (through the route's stack). Empty: the service itself.
    #[serde(default)]
    pub backends: BTreeMap<String, u32>,
    /// Keeps one caller on one backend: `header:<name>` or `cookie:<name>` (the
    /// balancer's `hash_key` forms, and `client_ip`).
    #[serde(default)]
    pub sticky: Option<String>,
    /// Headers changed on the request before it is sent.
    #[serde(default)]
    pub request_headers: Option<HeaderEditsSection>,
    /// Headers changed on the answer before the caller sees it.
    #[serde(default)]
    pub response_headers: Option<HeaderEditsSection>,
    /// The path as sent upstream.
    #[serde(default)]
    pub rewrite: Option<RewriteSection>,
    /// A fixed answer, sent by remora itself.
    #[serde(default)]
    pub respond: Option<DirectResponseSection>,
    /// A redirect, sent by remora itself.
    #[serde(default)]
    pub redirect: Option<RedirectSection>,
    /// Copies of a share of the requests, sent to another service and never waited for.
    #[serde(default)]
    pub mirror: Option<MirrorSection>,
    /// Overrides of the service's policies (each omitted one is the service's).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retry policy name, or `none`.
    #[serde(default)]
    pub retry: Option<String>,
    /// Rate limit name, or `none`.
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// Fallback name, or `none`.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Fault name, or `none`.
    #[serde(default)]
    pub fault: Option<String>,
}

impl RouteSection {
    /// The route's metrics label: its `name`, else its path match as written (the path,
    /// prefix or regular expression, `package.Service/Method` or `package.Service`);
    /// empty for a route without either (the config check asks it for a `name`).
    pub fn label(&self) -> &str {
        if let Some(name) = &self.name {
            return name;
        }
        self.matches.path_text().unwrap_or_default()
    }
}

/// What an inbound authorization rule matches, by path: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Requests whose path starts with this segment prefix.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// gRPC calls of this method: `package.Service/Method`.
    #[serde(default)]
    pub grpc_method: Option<String>,
    /// gRPC calls of any method of this service: `package.Service`.
    #[serde(default)]
    pub grpc_service: Option<String>,
}
