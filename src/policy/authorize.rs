//! Inbound authorization: which callers may reach the local app, per path.
//!
//! The inbound listener's handshake has already authenticated the caller (a certificate
//! of the trust domain, see `tls::TrustBundleClientVerifier`) and the proxy knows its
//! SPIFFE ID, or that it came in plaintext (permissive mode). [`Authorization`] decides,
//! before the request reaches any stack: the first rule whose matcher takes the request's
//! path says who may call it; a path no rule takes falls under the default set.
//!
//! Not a tower layer: the decision needs only the path and the connection's identity,
//! and a refused call must not pass through (or be counted by) the app's policies.

use std::collections::HashSet;

use crate::core::matcher::RouteMatcher;
use crate::tls::{Identity, TrustDomain, SPIFFE_SCHEME};

/// Whom an allow list admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Exactly this SPIFFE ID.
    Identity(Identity),
    /// Every identity of this trust domain.
    TrustDomain(TrustDomain),
    /// A caller without an identity: plaintext, in permissive mode.
    Unauthenticated,
}

/// An allow list, ready for the request path: exact IDs in a set, trust domains as the
/// `spiffe://<domain>/` prefixes their IDs start with.
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    identities: HashSet<Box<str>>,
    /// `spiffe://<domain>/`, one per admitted trust domain.
    domains: Vec<Box<str>>,
    unauthenticated: bool,
}

impl Allowed {
    /// Admits each of `principals` (none: nobody).
    pub fn new(principals: impl IntoIterator<Item = Principal>) -> Self {
        let mut allowed = Self::default();
        for principal in principals {
            match principal {
                Principal::Identity(id) => {
                    allowed.identities.insert(id.to_string().into());
                }
                Principal::TrustDomain(domain) => {
                    let prefix = format!("{SPIFFE_SCHEME}{domain}/");
                    allowed.domains.push(prefix.into());
                }
                Principal::Unauthenticated => allowed.unauthenticated = true,
            }
        }
        allowed
    }

    /// Whether a caller with `identity` (`None`: no identity) is admitted. The identity
    /// is the one read from a verified certificate (`spiffe://<domain>/<service>`).
    pub fn admits(&self, identity: Option<&str>) -> bool {
        let Some(identity) = identity else {
            return self.unauthenticated;
        };
        self.identities.contains(identity)
            || self
                .domains
                .iter()
                .any(|prefix| identity.starts_with(&**prefix))
    }
}

/// The inbound listener's authorization: rules in order, then the default allow list.
#[derive(Debug, Clone)]
pub struct Authorization {
    rules: Vec<(RouteMatcher, Allowed)>,
    otherwise: Allowed,
}

impl Authorization {
    /// `rules`, first match wins; a path none takes is under `otherwise`.
    pub fn new(rules: Vec<(RouteMatcher, Allowed)>, otherwise: Allowed) -> Self {
        Self { rules, otherwise }
    }

    /// Whether a caller with `identity` (`None`: no identity) may open a connection that
    /// has no paths (TCP passthrough): the default allow list decides (a TCP inbound has
    /// no rules).
    pub fn admits_connection(&self, identity: Option<&str>) -> bool {
        self.otherwise.admits(identity)
    }

    /// Whether a caller with `identity` (`None`: no identity) may call `path`.
    pub fn admits(&self, path: &str, identity: Option<&str>) -> bool {
        self.rules
            .iter()
            .find(|(matcher, _)| matcher.matches(path))
            .map_or(&self.otherwise, |(_, allowed)| allowed)
            .admits(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(name: &str) -> TrustDomain {
        TrustDomain::parse(name).unwrap()
    }

    fn id(text: &str) -> Principal {
        Principal::Identity(Identity::parse(text).unwrap())
    }

    #[test]
    fn an_allow_list_admits_its_ids_its_domains_and_plaintext_only_when_told() {
        let allowed = Allowed::new([
            id("spiffe://example.org/frontend"),
            Principal::TrustDomain(domain("partner.org")),
        ]);
        assert!(allowed.admits(Some("spiffe://example.org/frontend")));
        assert!(allowed.admits(Some("spiffe://partner.org/anyone")));
        assert!(!allowed.admits(Some("spiffe://example.org/batch")));
        assert!(!allowed.admits(Some("spiffe://example.org/frontend2")));
        // A domain admits its identities, not a domain that merely starts like it.
        assert!(!allowed.admits(Some("spiffe://partner.org.evil/x")));
        assert!(!allowed.admits(None));
        assert!(Allowed::new([Principal::Unauthenticated]).admits(None));
        assert!(!Allowed::new([]).admits(Some("spiffe://example.org/frontend")));
    }

    #[test]
    fn the_first_matching_rule_decides_and_the_rest_fall_under_the_default() {
        let admin = Allowed::new([id("spiffe://example.org/ops")]);
        let quote = Allowed::new([id("spiffe://example.org/pricing")]);
        let everyone = Allowed::new([
            Principal::TrustDomain(domain("example.org")),
            Principal::Unauthenticated,
        ]);
        let authorization = Authorization::new(
            vec![
                (RouteMatcher::PathPrefix("/admin".into()), admin),
                (RouteMatcher::Path("/shop.Prices/Quote".into()), quote),
                (
                    RouteMatcher::Prefix("/shop.Prices/".into()),
                    Allowed::new([]),
                ),
            ],
            everyone,
        );
        let ops = Some("spiffe://example.org/ops");
        let pricing = Some("spiffe://example.org/pricing");
        assert!(authorization.admits("/admin/users", ops));
        assert!(!authorization.admits("/admin", pricing));
        assert!(!authorization.admits("/admin", None));
        assert!(authorization.admits("/shop.Prices/Quote", pricing));
        assert!(!authorization.admits("/shop.Prices/Quote", ops));
        assert!(!authorization.admits("/shop.Prices/List", pricing));
        assert!(authorization.admits("/administrator", pricing));
        assert!(authorization.admits("/", None));
    }
}
