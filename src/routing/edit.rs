//! Changes a route makes to what passes through it: headers added, set or removed (on
//! the request or the answer), and the matched path prefix replaced.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};

/// Headers added, set and removed, in that order of application: removals last, so a
/// header both set and removed ends up removed.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    add: Vec<(HeaderName, HeaderValue)>,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Edits that append `add`, replace with `set` and take out `remove`.
    pub fn new(
        add: Vec<(HeaderName, HeaderValue)>,
        set: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
    ) -> Self {
        Self { add, set, remove }
    }

    /// Whether these edits change nothing.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }

    /// Applies the edits to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// Replaces a matched segment prefix of the path; the query stays.
#[derive(Debug, Clone)]
pub struct PathRewrite {
    /// The prefix the route matched (without a trailing `/`; empty: every path).
    matched: String,
    /// What replaces it (without a trailing `/`; empty: the prefix is dropped).
    replacement: String,
}

impl PathRewrite {
    /// A rewrite of the prefix `matched` into `replacement`.
    pub fn new(matched: &str, replacement: &str) -> Self {
        Self {
            matched: matched.trim_end_matches('/').to_string(),
            replacement: replacement.trim_end_matches('/').to_string(),
        }
    }

    /// `uri` with its path rewritten; unchanged when its path is not under the prefix.
    pub fn apply(&self, uri: &Uri) -> Option<Uri> {
        let rest = uri.path().strip_prefix(self.matched.as_str())?;
        let path = match (self.replacement.as_str(), rest) {
            ("", "") => "/".to_string(),
            (replacement, rest) => format!("{replacement}{rest}"),
        };
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        let path_and_query = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
        Uri::from_parts(parts).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(matched: &str, replacement: &str, uri: &str) -> String {
        let uri: Uri = uri.parse().unwrap();
        PathRewrite::new(matched, replacement)
            .apply(&uri)
            .unwrap()
            .to_string()
    }

    #[test]
    fn replaces_the_matched_prefix_and_keeps_the_query() {
        assert_eq!(
            rewritten("/v1", "/api/v1", "/v1/orders?x=1"),
            "/api/v1/orders?x=1"
        );
        assert_eq!(rewritten("/v1", "/", "/v1/orders"), "/orders");
        assert_eq!(rewritten("/v1/", "/", "/v1"), "/");
        assert_eq!(rewritten("/v1", "/new", "/v1"), "/new");
        assert_eq!(rewritten("/", "/base", "/x"), "/base/x");
    }

    #[test]
    fn header_edits_add_set_then_remove() {
        let name = |n: &'static str| HeaderName::from_static(n);
        let value = |v: &'static str| HeaderValue::from_static(v);
        let edits = HeaderEdits::new(
            vec![(name("x-added"), value("1"))],
            vec![(name("x-set"), value("new"))],
            vec![name("x-gone")],
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-added", value("0"));
        headers.insert("x-set", value("old"));
        headers.insert("x-gone", value("bye"));
        edits.apply(&mut headers);
        assert_eq!(headers.get_all("x-added").iter().count(), 2);
        assert_eq!(headers["x-set"], "new");
        assert!(headers.get("x-gone").is_none());
    }
}
