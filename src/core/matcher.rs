//! Which requests a rule covers, by path: a segment prefix, one gRPC method, or every
//! method of one gRPC service.
//!
//! Routes (`build/route.rs`) and inbound authorization (`policy/authorize.rs`) both pick
//! the first rule whose matcher takes a request's path; the matcher lives here so that
//! both read one definition of "matches".

/// Which requests of a service a rule takes, by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatcher {
    /// Paths under this segment prefix.
    PathPrefix(String),
    /// Exactly this path (`/package.Service/Method`).
    Path(String),
    /// Paths starting with this (`/package.Service/`).
    Prefix(String),
}

impl RouteMatcher {
    /// Whether a request with `path` is taken by this matcher.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::PathPrefix(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
                None => false,
            },
            Self::Path(exact) => path == exact,
            Self::Prefix(prefix) => path.starts_with(prefix.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_matchers() {
        let prefix = RouteMatcher::PathPrefix("/api".into());
        assert!(prefix.matches("/api") && prefix.matches("/api/x"));
        assert!(!prefix.matches("/apiary"));
        let everything = RouteMatcher::PathPrefix(String::new());
        assert!(everything.matches("/") && everything.matches("/x"));
        let method = RouteMatcher::Path("/shop.Prices/Quote".into());
        assert!(method.matches("/shop.Prices/Quote"));
        assert!(!method.matches("/shop.Prices/QuoteAll"));
        let service = RouteMatcher::Prefix("/shop.Prices/".into());
        assert!(service.matches("/shop.Prices/Quote"));
        assert!(!service.matches("/shop.PricesV2/Quote"));
    }
}
