//! The YAML schema of a service's routes: which requests a route takes, and the
//! policies that replace the service's for them.

use serde::{Deserialize, Serialize};

/// A path prefix or gRPC method with its own policies.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The route's `route` label in metrics; by default its match text.
    #[serde(default)]
    pub name: Option<String>,
    /// Which requests the route takes.
    #[serde(rename = "match")]
    pub matches: RouteMatch,
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
    /// The route's metrics label: its `name`, else what it matches as written (the path
    /// prefix, `package.Service/Method` or `package.Service`).
    pub fn label(&self) -> &str {
        if let Some(name) = &self.name {
            return name;
        }
        let matches = &self.matches;
        matches
            .path_prefix
            .as_deref()
            .or(matches.grpc_method.as_deref())
            .or(matches.grpc_service.as_deref())
            .unwrap_or_default()
    }
}

/// What a route matches: exactly one of the fields.
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
