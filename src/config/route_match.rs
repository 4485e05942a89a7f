//! The YAML schema of a route's `match`: path (exact, segment prefix, regular
//! expression, gRPC method or service), method, headers and query parameters, all of
//! which a request must meet. How routes rank against each other is the build floor's
//! business (`routing::matcher`); whether each part is well formed on its own is
//! checked here, except what only the mechanism can tell (a regular expression).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::FieldPath;
use super::validate::Issue;

/// What a route matches: every given condition must hold; at least one is given.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    /// Exactly this path.
    #[serde(default)]
    pub path: Option<String>,
    /// Requests whose path starts with this segment prefix.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Paths this regular expression matches whole.
    #[serde(default)]
    pub path_regex: Option<String>,
    /// gRPC calls of this method: `package.Service/Method`.
    #[serde(default)]
    pub grpc_method: Option<String>,
    /// gRPC calls of any method of this service: `package.Service`.
    #[serde(default)]
    pub grpc_service: Option<String>,
    /// The request method (`GET`, `POST`, ...).
    #[serde(default)]
    pub method: Option<String>,
    /// Conditions on request headers, by header name.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderMatchSection>,
    /// Conditions on query parameters, by parameter name (as written in the URL).
    #[serde(default)]
    pub query: BTreeMap<String, QueryMatchSection>,
}

/// One header condition: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchSection {
    /// The value is exactly this.
    #[serde(default)]
    pub exact: Option<String>,
    /// This regular expression matches the whole value.
    #[serde(default)]
    pub regex: Option<String>,
    /// `true`: the header is there, whatever its value.
    #[serde(default)]
    pub present: bool,
    /// `true`: the header is not there.
    #[serde(default)]
    pub absent: bool,
}

/// One query parameter condition: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryMatchSection {
    /// The value is exactly this (as written in the URL, not percent-decoded).
    #[serde(default)]
    pub exact: Option<String>,
    /// This regular expression matches the whole value (as written in the URL).
    #[serde(default)]
    pub regex: Option<String>,
    /// `true`: the parameter is there, whatever its value.
    #[serde(default)]
    pub present: bool,
}

impl RequestMatch {
    /// The path condition as written, when there is one.
    pub fn path_text(&self) -> Option<&str> {
        self.path
            .as_deref()
            .or(self.path_prefix.as_deref())
            .or(self.path_regex.as_deref())
            .or(self.grpc_method.as_deref())
            .or(self.grpc_service.as_deref())
    }

    /// How many path conditions are given (at most one is allowed).
    fn path_conditions(&self) -> usize {
        [
            self.path.is_some(),
            self.path_prefix.is_some(),
            self.path_regex.is_some(),
            self.grpc_method.is_some(),
            self.grpc_service.is_some(),
        ]
        .iter()
        .filter(|given| **given)
        .count()
    }
}

/// A route's match: at most one path condition, at least one condition, each well
/// formed.
pub(crate) fn check(at: &FieldPath, matches: &RequestMatch, issues: &mut Vec<Issue>) {
    let paths = matches.path_conditions();
    if paths > 1 {
        issues.push(Issue::at(
            at.clone(),
            "a route matches on at most one of `path`, `path_prefix`, `path_regex`, \
             `grpc_method`, `grpc_service`",
        ));
    }
    if paths == 0
        && matches.method.is_none()
        && matches.headers.is_empty()
        && matches.query.is_empty()
    {
        issues.push(Issue::at(
            at.clone(),
            "a route needs a condition: a path (`path`, `path_prefix`, `path_regex`, \
             `grpc_method`, `grpc_service`), `method`, `headers` or `query` \
             (`path_prefix: /` takes every request)",
        ));
    }
    for (key, value) in [
        ("path", &matches.path),
        ("path_prefix", &matches.path_prefix),
    ] {
        if let Some(path) = value {
            if !path.starts_with('/') {
                issues.push(Issue::at(
                    at.key(key),
                    format!("invalid path {path:?}: it must start with `/`"),
                ));
            }
        }
    }
    if let Some(method) = &matches.grpc_method {
        let valid = method.split_once('/').is_some_and(|(service, method)| {
            !service.is_empty() && !method.is_empty() && !method.contains('/')
        });
        if !valid {
            issues.push(Issue::at(
                at.key("grpc_method"),
                format!("invalid gRPC method {method:?}: write it `package.Service/Method`"),
            ));
        }
    }
    if let Some(service) = &matches.grpc_service {
        if service.is_empty() || service.contains('/') {
            issues.push(Issue::at(
                at.key("grpc_service"),
                format!("invalid gRPC service {service:?}: write it `package.Service`"),
            ));
        }
    }
    if let Some(method) = &matches.method {
        if http::Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
            issues.push(Issue::at(
                at.key("method"),
                format!("invalid method {method:?}"),
            ));
        }
    }
    for (name, condition) in &matches.headers {
        let here = at.key("headers").key(name);
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            issues.push(Issue::at(
                here.clone(),
                format!("invalid header name {name:?}"),
            ));
        }
        let given = [
            condition.exact.is_some(),
            condition.regex.is_some(),
            condition.present,
            condition.absent,
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            issues.push(Issue::at(
                here,
                "a header condition is exactly one of `exact`, `regex`, `present: true`, \
                 `absent: true`",
            ));
        }
    }
    for (name, condition) in &matches.query {
        let here = at.key("query").key(name);
        if name.is_empty() || name.contains(['&', '=', '#']) {
            issues.push(Issue::at(
                here.clone(),
                format!("invalid query parameter name {name:?}"),
            ));
        }
        let given = [
            condition.exact.is_some(),
            condition.regex.is_some(),
            condition.present,
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            issues.push(Issue::at(
                here,
                "a query condition is exactly one of `exact`, `regex`, `present: true`",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues(yaml: &str) -> Vec<String> {
        let matches: RequestMatch = serde_saphyr::from_str(yaml).unwrap();
        let mut issues = Vec::new();
        check(&FieldPath::root().key("match"), &matches, &mut issues);
        issues
            .iter()
            .map(|issue| format!("{}: {}", issue.path, issue.message))
            .collect()
    }

    #[test]
    fn old_shapes_and_combinations_pass() {
        for yaml in [
            "path_prefix: /reports",
            "grpc_method: shop.Orders/Create",
            "grpc_service: shop.Orders",
            "path: /a\nmethod: POST\nheaders: { x-a: { present: true } }",
            "headers: { x-canary: { exact: 'true' }, x-b: { absent: true } }",
            "query: { v: { regex: '[0-9]+' }, debug: { present: true } }",
        ] {
            assert_eq!(issues(yaml), Vec::<String>::new(), "{yaml}");
        }
    }

    #[test]
    fn refuses_what_is_not_one_condition_each() {
        let cases = [
            ("{}", "match: a route needs a condition"),
            (
                "path: /a\npath_regex: '/b'",
                "match: a route matches on at most one",
            ),
            ("path: a", "match.path: invalid path"),
            (
                "headers: { x-a: {} }",
                "match.headers.x-a: a header condition is exactly one",
            ),
            (
                "headers: { x-a: { present: true, absent: true } }",
                "match.headers.x-a: a header",
            ),
            (
                "query: { v: { exact: '1', present: true } }",
                "match.query.v: a query condition",
            ),
            ("method: 'GE T'", "match.method: invalid method"),
        ];
        for (yaml, expected) in cases {
            let found = issues(yaml);
            assert!(
                found.iter().any(|i| i.starts_with(expected)),
                "{yaml}: {found:?}"
            );
        }
    }
}
