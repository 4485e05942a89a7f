//! The YAML schema of what a route does besides forwarding to its service: header
//! edits, a path rewrite, a fixed answer, a redirect, a mirror. Backends (the weighted
//! split) are a map on the route itself. The document checks here are about shape
//! (which fields go together); values a mechanism refuses (a header name, a status,
//! weights) are refused by the build floor's conversion, at their field.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::FieldPath;
use super::validate::Issue;
use super::{Percent, RouteSection};

/// Headers added, set or removed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEditsSection {
    /// Appended, beside any value already there.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Replacing any value already there.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Taken out.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A rewrite of the path sent upstream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSection {
    /// Replaces the matched `path_prefix` (`/v1` -> `/api/v1`, `/` drops it).
    pub path_prefix: String,
}

/// A fixed answer.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseSection {
    /// Its status.
    pub status: u16,
    /// Its body.
    #[serde(default)]
    pub body: String,
    /// Its headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A redirect: each part of `location` not given is the request's own.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSection {
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// The host name.
    #[serde(default)]
    pub host: Option<String>,
    /// The port.
    #[serde(default)]
    pub port: Option<u16>,
    /// The whole path (the query is kept).
    #[serde(default)]
    pub path: Option<String>,
}

fn default_redirect_status() -> u16 {
    302
}

/// Copies of a share of a route's requests, for another service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSection {
    /// The service the copies go to (through its own default stack).
    pub service: String,
    /// The share of requests copied.
    #[serde(default = "default_mirror_percent")]
    pub percent: Percent,
    /// Bodies longer than this are not copied (the request is not mirrored).
    #[serde(default = "default_mirror_body")]
    pub max_body_bytes: usize,
    /// Most copies in flight; a copy beyond it is dropped (counted).
    #[serde(default = "default_mirror_in_flight")]
    pub max_in_flight: usize,
    /// A copy still unanswered after this is abandoned.
    #[serde(default = "default_mirror_timeout", with = "super::scalar::duration")]
    pub timeout: Duration,
}

fn default_mirror_percent() -> Percent {
    Percent(1.0)
}

fn default_mirror_body() -> usize {
    64 * 1024
}

fn default_mirror_in_flight() -> usize {
    64
}

fn default_mirror_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A route answers itself (`respond`, `redirect`) or forwards (`backends`, `sticky`,
/// `rewrite`, `mirror`, `request_headers`), never both; a rewrite replaces a matched
/// path prefix, so it needs one; a route without a path match names its metrics label.
pub(crate) fn check(at: &FieldPath, route: &RouteSection, issues: &mut Vec<Issue>) {
    let answers: Vec<&str> = [
        ("respond", route.respond.is_some()),
        ("redirect", route.redirect.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, given)| given.then_some(key))
    .collect();
    let forwards: Vec<&str> = [
        ("backends", !route.backends.is_empty()),
        ("sticky", route.sticky.is_some()),
        ("rewrite", route.rewrite.is_some()),
        ("mirror", route.mirror.is_some()),
        ("request_headers", route.request_headers.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, given)| given.then_some(key))
    .collect();
    if answers.len() > 1 {
        issues.push(Issue::at(
            at.key("redirect"),
            "a route answers with `respond` or `redirect`, not both",
        ));
    }
    if let (Some(answer), Some(forward)) = (answers.first(), forwards.first()) {
        issues.push(Issue::at(
            at.key(*forward),
            format!("a route that answers itself (`{answer}`) forwards nothing: `{forward}` has no effect"),
        ));
    }
    if route.sticky.is_some() && route.backends.len() < 2 {
        issues.push(Issue::at(
            at.key("sticky"),
            "`sticky` keeps a caller on one of several `backends`: give at least two",
        ));
    }
    if route.rewrite.is_some() && route.matches.path_prefix.is_none() {
        issues.push(Issue::at(
            at.key("rewrite"),
            "`rewrite.path_prefix` replaces the matched prefix: the match needs a `path_prefix`",
        ));
    }
    if let Some(rewrite) = &route.rewrite {
        if !rewrite.path_prefix.starts_with('/') {
            issues.push(Issue::at(
                at.key("rewrite").key("path_prefix"),
                format!(
                    "invalid path prefix {:?}: it must start with `/`",
                    rewrite.path_prefix
                ),
            ));
        }
    }
    if route.name.is_none() && route.matches.path_text().is_none() {
        issues.push(Issue::at(
            at.clone(),
            "a route without a path match needs a `name` (its `route` label in metrics)",
        ));
    }
    if let Some(mirror) = &route.mirror {
        let here = at.key("mirror");
        if mirror.percent.0 <= 0.0 {
            issues.push(Issue::at(
                here.key("percent"),
                "a mirror copies more than 0%",
            ));
        }
        if mirror.max_in_flight == 0 {
            issues.push(Issue::at(
                here.key("max_in_flight"),
                "max_in_flight must be at least 1",
            ));
        }
        if mirror.timeout.is_zero() {
            issues.push(Issue::at(
                here.key("timeout"),
                "a timeout must be longer than zero",
            ));
        }
    }
}
