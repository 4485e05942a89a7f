//! A service's name on the mesh: the SPIFFE ID `spiffe://<trust-domain>/<service>`.
//!
//! Why SPIFFE IDs: they are what Linkerd, Istio and SPIRE put in workload certificates
//! (as the certificate's one URI SAN), so an X.509-SVID from SPIRE's helpers or a
//! certificate that step-ca issued with a `spiffe://` URI works here unchanged, and the
//! certificates `remora cert` issues work with their tools. remora names a service with
//! one path segment, spelled like the service names of its config; an ID with a longer
//! path (Istio's `/ns/<namespace>/sa/<account>`) is a valid SPIFFE ID but not a remora
//! identity, and is refused with a message that says so.

use std::fmt;
use std::str::FromStr;

use crate::core::labels::{is_service_name, SERVICE_NAME_RULE};

/// The scheme every SPIFFE ID starts with.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// SPIFFE's bound on a trust domain name.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A SPIFFE ID, a trust domain or a service name that is not one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct IdentityError {
    /// "SPIFFE identity", "trust domain" or "service name".
    what: &'static str,
    input: String,
    reason: &'static str,
}

impl IdentityError {
    fn new(what: &'static str, input: &str, reason: &'static str) -> Self {
        Self {
            what,
            input: input.to_string(),
            reason,
        }
    }
}

/// The trust domain of a mesh: the CA's realm, the host part of every SPIFFE ID it issues.
///
/// Invariant: lowercase DNS-like labels of `a-z`, `0-9`, `-` and `_`, joined by `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Checks `name` (`example.org`, not `spiffe://example.org`).
    pub fn parse(name: &str) -> Result<Self, IdentityError> {
        let error = |reason| IdentityError::new("trust domain", name, reason);
        if name.is_empty() {
            return Err(error("it is empty"));
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(error("it is longer than 255 characters"));
        }
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
        if !name.chars().all(allowed) {
            return Err(error(
                "use lowercase letters, digits, `-`, `_` and `.` (no scheme, port or path)",
            ));
        }
        if name.split('.').any(str::is_empty) {
            return Err(error(
                "it has an empty label (a leading, trailing or double `.`)",
            ));
        }
        Ok(Self(name.to_string()))
    }

    /// The trust domain named by its own SPIFFE ID, `spiffe://<trust-domain>`: what a CA
    /// certificate carries as its URI SAN.
    pub fn from_id(id: &str) -> Result<Self, IdentityError> {
        let Some(rest) = id.strip_prefix(SPIFFE_SCHEME) else {
            return Err(IdentityError::new(
                "SPIFFE identity",
                id,
                "it does not start with `spiffe://`",
            ));
        };
        Self::parse(rest.strip_suffix('/').unwrap_or(rest))
    }

    /// The name, `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://example.org`.
    pub fn id(&self) -> String {
        format!("{SPIFFE_SCHEME}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A service's identity, `spiffe://<trust-domain>/<service>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    trust_domain: TrustDomain,
    /// Invariant: a valid service name (see [`check_service`]).
    service: String,
}

impl Identity {
    /// The identity of `service` in `trust_domain`.
    pub fn try_new(trust_domain: TrustDomain, service: &str) -> Result<Self, IdentityError> {
        check_service(service)?;
        Ok(Self {
            trust_domain,
            service: service.to_string(),
        })
    }

    /// Parses `spiffe://<trust-domain>/<service>`.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let error = |reason| IdentityError::new("SPIFFE identity", uri, reason);
        let Some(rest) = uri.strip_prefix(SPIFFE_SCHEME) else {
            return Err(error("it does not start with `spiffe://`"));
        };
        let Some((domain, path)) = rest.split_once('/') else {
            return Err(error(
                "it names no service (expected spiffe://<trust-domain>/<service>)",
            ));
        };
        if path.contains('/') {
            return Err(error(
                "its path has more than one segment: remora names a service with one \
                 (spiffe://<trust-domain>/<service>)",
            ));
        }
        let trust_domain = TrustDomain::parse(domain)?;
        Self::try_new(trust_domain, path)
    }

    /// The trust domain, `example.org`.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The service name, `orders`.
    pub fn service(&self) -> &str {
        &self.service
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SPIFFE_SCHEME}{}/{}", self.trust_domain, self.service)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Service names appear in Host headers, metric labels and logs, and here in a URI path:
/// the same DNS-like spelling the config asks of them.
fn check_service(name: &str) -> Result<(), IdentityError> {
    if is_service_name(name) {
        Ok(())
    } else {
        Err(IdentityError::new("service name", name, SERVICE_NAME_RULE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_the_same_text() {
        let id = Identity::parse("spiffe://example.org/orders").unwrap();
        assert_eq!(id.trust_domain().as_str(), "example.org");
        assert_eq!(id.service(), "orders");
        assert_eq!(id.to_string(), "spiffe://example.org/orders");
        assert_eq!(
            "spiffe://cluster.local/a-b_c.1"
                .parse::<Identity>()
                .unwrap()
                .service(),
            "a-b_c.1"
        );
    }

    #[test]
    fn refuses_what_is_not_a_remora_identity() {
        let refused = [
            (
                "https://example.org/orders",
                "does not start with `spiffe://`",
            ),
            (
                "SPIFFE://example.org/orders",
                "does not start with `spiffe://`",
            ),
            ("spiffe://example.org", "names no service"),
            ("spiffe://example.org/", "invalid service name \"\""),
            (
                "spiffe://example.org/ns/default/sa/orders",
                "more than one segment",
            ),
            ("spiffe://Example.org/orders", "invalid trust domain"),
            ("spiffe://example.org:443/orders", "invalid trust domain"),
            ("spiffe://example..org/orders", "empty label"),
            ("spiffe:///orders", "it is empty"),
            ("spiffe://example.org/Orders", "invalid service name"),
            ("spiffe://example.org/-orders", "invalid service name"),
            ("spiffe://example.org/orders?x=1", "invalid service name"),
        ];
        for (input, expected) in refused {
            let error = Identity::parse(input).unwrap_err().to_string();
            assert!(error.contains(expected), "{input}: {error}");
        }
    }

    #[test]
    fn a_trust_domain_reads_from_its_own_id() {
        let domain = TrustDomain::from_id("spiffe://example.org").unwrap();
        assert_eq!(domain.id(), "spiffe://example.org");
        assert_eq!(
            TrustDomain::from_id("spiffe://example.org/").unwrap(),
            domain
        );
        assert!(TrustDomain::from_id("example.org").is_err());
        let long = "a".repeat(256);
        assert!(TrustDomain::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("255"));
    }
}
