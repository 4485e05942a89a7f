//! A route's `match` and action -> the routing mechanism's matcher and [`RouteAction`].
//!
//! Backends and the mirror are stacks of other services (or the route's own): the
//! caller hands a `backend` lookup, as it hands a fallback its alternates; validation
//! looks names up without building anything (`S = ()`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;

use crate::config::{FieldPath, HeaderEditsSection, RequestMatch, RouteSection};
use crate::routing::{
    whole_regex, DirectResponse, HeaderEdits, Mirror, MirrorConfig, MirrorMetrics, PathMatch,
    PathRewrite, Redirect, Reply, RequestMatcher, RouteAction, Split, ValueMatch,
};

use super::{At, BuildError};

/// The matcher of a route's `match` block (the config's check makes sure it names at
/// most one path condition and at least one condition).
pub fn route_match(matches: &RequestMatch) -> Result<RequestMatcher, BuildError> {
    let path = if let Some(path) = &matches.path {
        PathMatch::Exact(path.clone())
    } else if let Some(prefix) = &matches.path_prefix {
        PathMatch::Prefix(prefix.trim_end_matches('/').to_string())
    } else if let Some(pattern) = &matches.path_regex {
        PathMatch::Regex(whole_regex(pattern).at("path_regex")?)
    } else if let Some(method) = &matches.grpc_method {
        PathMatch::Exact(format!("/{method}"))
    } else if let Some(service) = &matches.grpc_service {
        PathMatch::Prefix(format!("/{service}"))
    } else {
        PathMatch::Any
    };
    let mut matcher = RequestMatcher::path(path);
    if let Some(method) = &matches.method {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("invalid method {method:?}"))
            .at("method")?;
        matcher = matcher.with_method(method);
    }
    for (name, condition) in &matches.headers {
        let at = FieldPath::root().key("headers").key(name);
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| BuildError::at(at.clone(), format!("invalid header name {name:?}")))?;
        let condition = if let Some(value) = &condition.exact {
            ValueMatch::Exact(value.as_bytes().to_vec())
        } else if let Some(pattern) = &condition.regex {
            ValueMatch::Regex(whole_regex(pattern).map_err(|e| BuildError::at(at.key("regex"), e))?)
        } else if condition.absent {
            ValueMatch::Absent
        } else {
            ValueMatch::Present
        };
        matcher = matcher.with_header(header, condition);
    }
    for (name, condition) in &matches.query {
        let at = FieldPath::root().key("query").key(name);
        let condition = if let Some(value) = &condition.exact {
            ValueMatch::Exact(value.as_bytes().to_vec())
        } else if let Some(pattern) = &condition.regex {
            ValueMatch::Regex(whole_regex(pattern).map_err(|e| BuildError::at(at.key("regex"), e))?)
        } else {
            ValueMatch::Present
        };
        matcher = matcher.with_query(name.clone(), condition);
    }
    Ok(matcher)
}

/// The action of `route` of `service`; `backend` gives the stack of a service by name
/// (the service's own name: the route's own stack), `None` when there is no such
/// service. `None` when the route has no action field: it is its stack alone.
pub fn route_action<S: Clone>(
    service: &str,
    route: &RouteSection,
    backend: &dyn Fn(&str) -> Option<S>,
    metrics: &MirrorMetrics,
) -> Result<Option<RouteAction<S>>, BuildError> {
    let mut action = RouteAction::default();
    if let Some(direct) = &route.respond {
        let headers =
            header_map(&direct.headers).map_err(|e| e.under("headers").under("respond"))?;
        action.reply = Some(Reply::Direct(
            DirectResponse::try_new(direct.status, Bytes::from(direct.body.clone()), headers)
                .at("respond.status")?,
        ));
    }
    if let Some(redirect) = &route.redirect {
        action.reply = Some(Reply::Redirect(
            Redirect::try_new(
                redirect.status,
                redirect.scheme.clone(),
                redirect.host.clone(),
                redirect.port,
                redirect.path.clone(),
            )
            .at("redirect")?,
        ));
    }
    if let Some(edits) = &route.request_headers {
        action.request_headers = header_edits(edits).map_err(|e| e.under("request_headers"))?;
    }
    if let Some(edits) = &route.response_headers {
        action.response_headers = header_edits(edits).map_err(|e| e.under("response_headers"))?;
    }
    if let (Some(rewrite), Some(prefix)) = (&route.rewrite, &route.matches.path_prefix) {
        action.rewrite = Some(PathRewrite::new(prefix, &rewrite.path_prefix));
    }
    if !route.backends.is_empty() {
        let sticky = route
            .sticky
            .as_deref()
            .map(|text| super::hash_key(text, "sticky"))
            .transpose()
            .at("sticky")?;
        if let Some(crate::balance::HashKey::Cookie(name)) = &sticky {
            if name.is_empty() || name.contains([';', '=', ' ']) {
                return Err(format!("invalid cookie name {name:?}")).at("sticky");
            }
        }
        let mut legs = Vec::with_capacity(route.backends.len());
        for (name, weight) in &route.backends {
            let leg = backend(name).ok_or_else(|| {
                BuildError::at(
                    FieldPath::root().key("backends").key(name),
                    format!("unknown service `{name}`"),
                )
            })?;
            legs.push((leg, *weight));
        }
        action.split = Some(Split::try_new(legs, sticky).at("backends")?);
    }
    if let Some(mirror) = &route.mirror {
        let stack = backend(&mirror.service)
            .ok_or_else(|| format!("unknown service `{}`", mirror.service))
            .at("mirror.service")?;
        let config = MirrorConfig::try_new(
            mirror.percent.0,
            mirror.max_body_bytes,
            mirror.max_in_flight,
            mirror.timeout,
        )
        .at("mirror")?;
        action.mirror = Some(Mirror::new(
            Arc::from(service),
            Arc::from(mirror.service.as_str()),
            stack,
            config,
            metrics,
        ));
    }
    Ok((!action.is_empty()).then_some(action))
}

fn header_edits(section: &HeaderEditsSection) -> Result<HeaderEdits, BuildError> {
    let pairs = |map: &BTreeMap<String, String>,
                 key: &str|
     -> Result<Vec<(HeaderName, HeaderValue)>, BuildError> {
        Ok(header_map(map)
            .map_err(|e| e.under(key))?
            .into_iter()
            .filter_map(|(name, value)| Some((name?, value)))
            .collect())
    };
    let add = pairs(&section.add, "add")?;
    let set = pairs(&section.set, "set")?;
    let mut remove = Vec::with_capacity(section.remove.len());
    for (i, name) in section.remove.iter().enumerate() {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            BuildError::at(
                FieldPath::root().key("remove").index(i),
                format!("invalid header name {name:?}"),
            )
        })?;
        remove.push(header);
    }
    Ok(HeaderEdits::new(add, set, remove))
}

/// Headers written as a map of name to value.
fn header_map(map: &BTreeMap<String, String>) -> Result<HeaderMap, BuildError> {
    let mut headers = HeaderMap::with_capacity(map.len());
    for (name, value) in map {
        let at = FieldPath::root().key(name);
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| BuildError::at(at.clone(), format!("invalid header name {name:?}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| BuildError::at(at, format!("invalid header value {value:?}")))?;
        headers.append(header, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str) -> RouteSection {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn refusal(yaml: &str) -> String {
        let route = route(yaml);
        let known = |name: &str| (name == "v1" || name == "v2").then_some(());
        let result = route_match(&route.matches).map(drop).and_then(|()| {
            route_action("orders", &route, &known, &MirrorMetrics::default()).map(drop)
        });
        let error = result.unwrap_err();
        format!("{}: {}", error.field, error.message)
    }

    #[test]
    fn refuses_at_the_field() {
        let cases = [
            ("match: { path_regex: '(' }\n", "path_regex"),
            (
                "match: { headers: { x-a: { regex: '[' } } }\n",
                "headers.x-a.regex",
            ),
            (
                "match: { path_prefix: / }\nbackends: { v3: 1 }\n",
                "backends.v3: unknown service",
            ),
            (
                "match: { path_prefix: / }\nbackends: { v1: 0, v2: 0 }\n",
                "backends: every backend weight is 0",
            ),
            (
                "match: { path_prefix: / }\nmirror: { service: nope }\n",
                "mirror.service: unknown service",
            ),
            (
                "match: { path_prefix: / }\nrespond: { status: 42 }\n",
                "respond.status",
            ),
            (
                "match: { path_prefix: / }\nredirect: { status: 200 }\n",
                "redirect: invalid redirect status",
            ),
            (
                "match: { path_prefix: / }\nrequest_headers: { set: { 'a b': x } }\n",
                "request_headers.set.\"a b\"",
            ),
            (
                "match: { path_prefix: / }\nbackends: { v1: 1, v2: 1 }\nsticky: 'query:x'\n",
                "sticky: invalid sticky",
            ),
            (
                "match: { path_prefix: / }\nbackends: { v1: 1, v2: 1 }\nsticky: 'cookie:'\n",
                "sticky: invalid cookie name",
            ),
        ];
        for (yaml, expected) in cases {
            let refusal = refusal(yaml);
            assert!(refusal.starts_with(expected), "{yaml}: {refusal}");
        }
    }

    #[test]
    fn a_route_of_policies_alone_has_no_action() {
        let route = route("match: { path_prefix: /a }\nretry: none\n");
        let known = |_: &str| Some(());
        let action = route_action("orders", &route, &known, &MirrorMetrics::default()).unwrap();
        assert!(action.is_none());
    }
}
