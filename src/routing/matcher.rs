//! Which requests a route takes: its path (exact, segment prefix, regular expression),
//! method, headers and query parameters, all of which must hold.
//!
//! A matcher is built once per config; matching a request reads its path, headers and
//! query in place and allocates nothing. Routes rank by [`Precedence`] (Gateway API's
//! HTTPRoute order): the build floor sorts a service's routes by it once, so that the
//! first route that matches is also the most specific one.

use http::{HeaderName, Method, Request};
use regex::bytes::{Regex, RegexBuilder};

/// Most bytes a compiled regular expression may take (its program and its lazy DFA
/// each), so that a pattern cannot make matching costly in memory.
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// A regular expression that matches whole values only, within [`REGEX_SIZE_LIMIT`].
pub fn whole_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// The path condition of a route.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Every path.
    Any,
    /// Exactly this path.
    Exact(String),
    /// Paths under this segment prefix (written without a trailing `/`; empty: every path).
    Prefix(String),
    /// Paths this expression matches whole ([`whole_regex`]).
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => path == exact,
            Self::Prefix(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(rest) => prefix.is_empty() || rest.is_empty() || rest.starts_with('/'),
                None => false,
            },
            Self::Regex(regex) => regex.is_match(path.as_bytes()),
        }
    }

    /// 3 for exact, 2 for a regular expression, 1 for a prefix or none (Gateway API
    /// counts a match without a path as the prefix `/`).
    fn rank(&self) -> (u8, usize) {
        match self {
            Self::Exact(_) => (3, 0),
            Self::Regex(_) => (2, 0),
            Self::Prefix(prefix) => (1, prefix.len()),
            Self::Any => (1, 0),
        }
    }
}

/// A condition on a header value or a query parameter.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// Exactly this value.
    Exact(Vec<u8>),
    /// A value this expression matches whole.
    Regex(Regex),
    /// Any value.
    Present,
    /// No such header (never used for query parameters).
    Absent,
}

impl ValueMatch {
    /// Whether `values` (every value the request carries under the name) meet the
    /// condition: one value that does is enough.
    fn holds<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>) -> bool {
        match self {
            Self::Exact(exact) => values.any(|value| value == exact.as_slice()),
            Self::Regex(regex) => values.any(|value| regex.is_match(value)),
            Self::Present => values.next().is_some(),
            Self::Absent => values.next().is_none(),
        }
    }
}

/// Everything a route asks of a request.
#[derive(Debug, Clone)]
pub struct RequestMatcher {
    path: PathMatch,
    method: Option<Method>,
    headers: Vec<(HeaderName, ValueMatch)>,
    query: Vec<(String, ValueMatch)>,
}

impl RequestMatcher {
    /// A matcher of `path` alone.
    pub fn path(path: PathMatch) -> Self {
        Self {
            path,
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
        }
    }

    /// Also asks for `method`.
    pub fn with_method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Also asks header `name` to meet `condition`.
    pub fn with_header(mut self, name: HeaderName, condition: ValueMatch) -> Self {
        self.headers.push((name, condition));
        self
    }

    /// Also asks query parameter `name` to meet `condition`.
    pub fn with_query(mut self, name: String, condition: ValueMatch) -> Self {
        self.query.push((name, condition));
        self
    }

    /// The path condition.
    pub fn path_match(&self) -> &PathMatch {
        &self.path
    }

    /// The headers a request must carry for this matcher to take it (every header
    /// condition but `absent`).
    pub fn required_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.headers
            .iter()
            .filter(|(_, condition)| !matches!(condition, ValueMatch::Absent))
            .map(|(name, _)| name)
    }

    /// Whether `request` meets every condition. The cheap ones go first.
    pub fn matches<B>(&self, request: &Request<B>) -> bool {
        if let Some(method) = &self.method {
            if request.method() != method {
                return false;
            }
        }
        // Cheapest first: a regular expression over the path runs only once the method,
        // the headers and any plain path test have let the request through.
        let regex = matches!(self.path, PathMatch::Regex(_));
        if !regex && !self.path.matches(request.uri().path()) {
            return false;
        }
        let headers = request.headers();
        let headers_hold = self.headers.iter().all(|(name, condition)| {
            condition.holds(headers.get_all(name).iter().map(|v| v.as_bytes()))
        });
        if !headers_hold {
            return false;
        }
        if regex && !self.path.matches(request.uri().path()) {
            return false;
        }
        if self.query.is_empty() {
            return true;
        }
        let query = request.uri().query().unwrap_or_default();
        self.query
            .iter()
            .all(|(name, condition)| condition.holds(query_values(query, name)))
    }

    /// How this matcher ranks against others.
    pub fn precedence(&self) -> Precedence {
        let (path_kind, prefix_len) = self.path.rank();
        Precedence {
            path_kind,
            prefix_len,
            method: self.method.is_some(),
            headers: self.headers.len(),
            query: self.query.len(),
        }
    }
}

/// The values of parameter `name` in a raw query string, as written.
fn query_values<'q>(query: &'q str, name: &'q str) -> impl Iterator<Item = &'q [u8]> + 'q {
    query.split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value.as_bytes())
    })
}

/// A route's rank: exact path > regular expression > longer prefix > method given >
/// more header conditions > more query conditions (compared in that order, which is
/// the order of the fields). Ties keep the configured order (the sort that uses it is
/// stable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    path_kind: u8,
    prefix_len: usize,
    method: bool,
    headers: usize,
    query: usize,
}

/// Sorts `routes` most specific first, keeping the configured order among equals.
pub fn by_precedence<T>(routes: &mut [(RequestMatcher, T)]) {
    routes.sort_by_key(|(matcher, _)| std::cmp::Reverse(matcher.precedence()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn paths_match_exactly_by_segment_prefix_or_whole_regex() {
        let exact = RequestMatcher::path(PathMatch::Exact("/a".into()));
        assert!(exact.matches(&request("GET", "/a", &[])));
        assert!(!exact.matches(&request("GET", "/a/b", &[])));
        let prefix = RequestMatcher::path(PathMatch::Prefix("/api".into()));
        assert!(prefix.matches(&request("GET", "/api/x?q=1", &[])));
        assert!(!prefix.matches(&request("GET", "/apiary", &[])));
        let everything = RequestMatcher::path(PathMatch::Prefix(String::new()));
        assert!(everything.matches(&request("GET", "/x", &[])));
        let regex = RequestMatcher::path(PathMatch::Regex(whole_regex("/users/[0-9]+").unwrap()));
        assert!(regex.matches(&request("GET", "/users/42", &[])));
        assert!(!regex.matches(&request("GET", "/users/42/orders", &[])));
    }

    #[test]
    fn method_headers_and_query_must_all_hold() {
        let matcher = RequestMatcher::path(PathMatch::Any)
            .with_method(Method::POST)
            .with_header(
                HeaderName::from_static("x-canary"),
                ValueMatch::Exact(b"true".to_vec()),
            )
            .with_header(HeaderName::from_static("x-skip"), ValueMatch::Absent)
            .with_query(
                "v".into(),
                ValueMatch::Regex(whole_regex("[0-9]+").unwrap()),
            );
        let hit = request("POST", "/o?a=1&v=22", &[("x-canary", "true")]);
        assert!(matcher.matches(&hit));
        assert!(!matcher.matches(&request("GET", "/o?v=22", &[("x-canary", "true")])));
        assert!(!matcher.matches(&request("POST", "/o?v=x", &[("x-canary", "true")])));
        assert!(!matcher.matches(&request("POST", "/o?v=2", &[("x-canary", "yes")])));
        let skipped = request("POST", "/o?v=2", &[("x-canary", "true"), ("x-skip", "1")]);
        assert!(!matcher.matches(&skipped));
        let present =
            RequestMatcher::path(PathMatch::Any).with_query("debug".into(), ValueMatch::Present);
        assert!(present.matches(&request("GET", "/?debug", &[])));
        assert!(!present.matches(&request("GET", "/?debugger=1", &[])));
    }

    #[test]
    fn the_most_specific_route_ranks_first_and_ties_keep_their_order() {
        let mut routes = vec![
            (
                RequestMatcher::path(PathMatch::Prefix(String::new())),
                "all",
            ),
            (
                RequestMatcher::path(PathMatch::Prefix("/api".into())),
                "api",
            ),
            (
                RequestMatcher::path(PathMatch::Any)
                    .with_header(HeaderName::from_static("x-canary"), ValueMatch::Present),
                "canary",
            ),
            (
                RequestMatcher::path(PathMatch::Regex(whole_regex("/a.*").unwrap())),
                "regex",
            ),
            (
                RequestMatcher::path(PathMatch::Exact("/api/x".into())),
                "exact",
            ),
            (
                RequestMatcher::path(PathMatch::Prefix("/api".into())),
                "api-again",
            ),
        ];
        by_precedence(&mut routes);
        let order: Vec<&str> = routes.iter().map(|(_, name)| *name).collect();
        assert_eq!(
            order,
            ["exact", "regex", "api", "api-again", "canary", "all"]
        );
    }

    #[test]
    fn a_pattern_too_large_is_refused() {
        assert!(whole_regex("a{1000}{1000}").is_err());
        assert!(whole_regex("(").is_err());
    }
}
