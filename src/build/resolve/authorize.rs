//! `inbound.allow` and `inbound.authorize` -> the inbound listener's [`Authorization`].
//!
//! Entries are read against the sidecar's own trust domain (that of its certificate): a
//! service name `frontend` is `spiffe://<own domain>/frontend`, `*` the whole own
//! domain. A full SPIFFE ID (or a trust domain's own ID, `spiffe://<domain>`) must be of
//! the own domain too: the handshake refuses every other domain, so such an entry could
//! never admit anyone.

use crate::config::{AuthorizeRule, FieldPath, InboundSection, RouteMatch, ALLOW_TRUST_DOMAIN};
use crate::core::matcher::RouteMatcher;
use crate::policy::authorize::{Allowed, Authorization, Principal};
use crate::tls::{Identity, TrustDomain, SPIFFE_SCHEME};

use super::BuildError;

/// The authorization of `inbound` for a sidecar of trust domain `own`, or `None` when
/// neither `allow` nor `authorize` is written: every caller the handshake admits (and,
/// in permissive mode, every plaintext caller) reaches the app, with no check per
/// request.
///
/// A written list admits exactly what it names; only the implicit default (no `allow`,
/// for paths no `authorize` rule takes) also admits plaintext callers, which matters in
/// permissive mode only.
pub fn authorization(
    inbound: &InboundSection,
    own: &TrustDomain,
) -> Result<Option<Authorization>, BuildError> {
    if inbound.allow.is_none() && inbound.authorize.is_empty() {
        return Ok(None);
    }
    let otherwise = match &inbound.allow {
        Some(entries) => allowed(entries, own).map_err(|e| e.under("allow"))?,
        None => Allowed::new([
            Principal::TrustDomain(own.clone()),
            Principal::Unauthenticated,
        ]),
    };
    let mut rules = Vec::with_capacity(inbound.authorize.len());
    for (i, rule) in inbound.authorize.iter().enumerate() {
        let at = FieldPath::root().key("authorize").index(i);
        rules.push(self::rule(rule, own).map_err(|e| e.within(&at))?);
    }
    Ok(Some(Authorization::new(rules, otherwise)))
}

fn rule(rule: &AuthorizeRule, own: &TrustDomain) -> Result<(RouteMatcher, Allowed), BuildError> {
    let matcher = route_matcher(&rule.matches)
        .ok_or_else(|| BuildError::at(FieldPath::root().key("match"), "matches nothing"))?;
    let allowed = allowed(&rule.allow, own).map_err(|e| e.under("allow"))?;
    Ok((matcher, allowed))
}

/// The matcher of a `match` block (the config's check makes sure it names one field).
pub fn route_matcher(matches: &RouteMatch) -> Option<RouteMatcher> {
    if let Some(prefix) = &matches.path_prefix {
        return Some(RouteMatcher::PathPrefix(
            prefix.trim_end_matches('/').to_string(),
        ));
    }
    if let Some(method) = &matches.grpc_method {
        return Some(RouteMatcher::Path(format!("/{method}")));
    }
    matches
        .grpc_service
        .as_ref()
        .map(|service| RouteMatcher::Prefix(format!("/{service}/")))
}

fn allowed(entries: &[String], own: &TrustDomain) -> Result<Allowed, BuildError> {
    let principals = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            principal(entry, own)
                .map_err(|message| BuildError::at(FieldPath::root().index(i), message))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Allowed::new(principals))
}

/// One `allow` entry: `*`, a service name, a SPIFFE ID, or a trust domain's own ID.
fn principal(entry: &str, own: &TrustDomain) -> Result<Principal, String> {
    if entry == ALLOW_TRUST_DOMAIN {
        return Ok(Principal::TrustDomain(own.clone()));
    }
    if !entry.starts_with(SPIFFE_SCHEME) {
        return Identity::try_new(own.clone(), entry)
            .map(Principal::Identity)
            .map_err(|e| e.to_string());
    }
    let (principal, domain) = match Identity::parse(entry) {
        Ok(identity) => {
            let domain = identity.trust_domain().clone();
            (Principal::Identity(identity), domain)
        }
        Err(error) => {
            // `spiffe://<domain>` alone names the whole domain.
            let domain = TrustDomain::from_id(entry)
                .ok()
                .filter(|_| {
                    !entry[SPIFFE_SCHEME.len()..]
                        .trim_end_matches('/')
                        .contains('/')
                })
                .ok_or_else(|| error.to_string())?;
            (Principal::TrustDomain(domain.clone()), domain)
        }
    };
    if &domain != own {
        return Err(format!(
            "`{entry}` is of trust domain {domain}, but this sidecar's certificate is of \
             {own}: callers of another trust domain are refused at the handshake"
        ));
    }
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    fn inbound(yaml: &str) -> InboundSection {
        serde_saphyr::from_str(&format!("app: 127.0.0.1:8080\n{yaml}")).unwrap()
    }

    #[test]
    fn names_resolve_against_the_own_trust_domain() {
        let section = inbound(
            "allow: [frontend, 'spiffe://example.org/batch']\n\
             authorize:\n  - match: { path_prefix: /admin/ }\n    allow: ['*']\n",
        );
        let authorization = authorization(&section, &own()).unwrap().unwrap();
        assert!(authorization.admits("/", Some("spiffe://example.org/frontend")));
        assert!(authorization.admits("/", Some("spiffe://example.org/batch")));
        assert!(!authorization.admits("/", Some("spiffe://example.org/other")));
        assert!(!authorization.admits("/", None));
        assert!(authorization.admits("/admin/x", Some("spiffe://example.org/other")));
        assert!(!authorization.admits("/admin/x", None));
    }

    #[test]
    fn no_list_means_no_check_and_rules_alone_keep_the_default_for_the_rest() {
        assert!(authorization(&inbound(""), &own()).unwrap().is_none());
        let section =
            inbound("authorize:\n  - match: { grpc_service: shop.Prices }\n    allow: [pricing]\n");
        let authorization = authorization(&section, &own()).unwrap().unwrap();
        assert!(!authorization.admits("/shop.Prices/Quote", None));
        assert!(authorization.admits("/other", None));
        assert!(authorization.admits("/other", Some("spiffe://example.org/x")));
    }

    #[test]
    fn refuses_what_can_never_admit_anyone_at_its_entry() {
        let cases = [
            (
                "allow: ['spiffe://other.org/frontend']",
                "allow[0]",
                "trust domain other.org",
            ),
            (
                "allow: [a, 'spiffe://other.org']",
                "allow[1]",
                "trust domain other.org",
            ),
            (
                "allow: ['spiffe://example.org/ns/x/sa/y']",
                "allow[0]",
                "more than one segment",
            ),
            (
                "authorize:\n  - match: { path_prefix: / }\n    allow: [ok, 'spiffe://Bad/x']\n",
                "authorize[0].allow[1]",
                "invalid trust domain",
            ),
        ];
        for (yaml, field, message) in cases {
            let error = authorization(&inbound(yaml), &own()).unwrap_err();
            assert_eq!(error.field.to_string(), field, "{yaml}");
            assert!(error.message.contains(message), "{yaml}: {error}");
        }
        let whole = inbound("allow: ['spiffe://example.org']");
        let authorization = authorization(&whole, &own()).unwrap().unwrap();
        assert!(authorization.admits("/", Some("spiffe://example.org/any")));
    }
}
