//! The YAML schema of TLS: the sidecar's own identity (`tls`), how the inbound listener
//! uses it (`inbound.tls`, `inbound.allow`, `inbound.authorize`), and the one client
//! block (`tls:` under a service, a registry or the trace exporter) that says how remora
//! talks TLS to something it calls.
//!
//! Paths are read as written: relative ones from the working directory, like the file
//! registry's.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::FieldPath;
use super::routes::RouteMatch;
use super::schema::Config;
use super::validate::Issue;
use crate::core::labels::{is_service_name, SERVICE_NAME_RULE};

/// The sidecar's own certificate: who it is to its peers, and whom it trusts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeshTlsSection {
    /// PEM certificate chain, leaf first; the leaf carries the service's SPIFFE identity
    /// (`spiffe://<trust domain>/<service>`) as its one URI SAN.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM CA certificates of the trust domain: peers must chain to one of them.
    pub bundle: PathBuf,
}

/// How the inbound listener treats TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundTlsMode {
    /// Mutual TLS only: a caller without a certificate of the trust domain never
    /// reaches the app.
    Strict,
    /// Mutual TLS and plaintext on the same port, told apart by the first bytes (for
    /// moving a system to mTLS one service at a time).
    Permissive,
    /// Plaintext only.
    Off,
}

/// An authorization rule of the inbound listener: the callers a group of requests
/// admits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRule {
    /// Which requests the rule covers (a path prefix, a gRPC method or service).
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// Who may call them: service names of the trust domain, full SPIFFE IDs, or `"*"`
    /// (every identity of the trust domain). Empty: nobody.
    pub allow: Vec<String>,
}

/// How remora talks TLS to something it calls: a meshed sidecar (`mesh: true`) or any
/// TLS server (an external API, etcd, Consul, a trace collector).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Mutual TLS with the sidecar's own certificate (top-level `tls`), accepting only a
    /// server of the trust domain that carries `identity`.
    #[serde(default)]
    pub mesh: bool,
    /// With `mesh`: the identity the server must carry, a service name of the trust
    /// domain or a full SPIFFE ID (default: the service's discovery name).
    #[serde(default)]
    pub identity: Option<String>,
    /// Without `mesh`: the name sent as SNI and checked against the server's certificate
    /// (default: the host name of the address, when it has one).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Without `mesh`: PEM CA certificates the server must chain to (default: the
    /// system's roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Without `mesh`: a PEM client certificate chain to present (with `key`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Without `mesh`: the PEM private key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// The `allow` entry that admits every identity of the trust domain.
pub const ALLOW_TRUST_DOMAIN: &str = "*";

impl Config {
    /// The inbound listener's TLS mode: as written, else `strict` when the sidecar has
    /// an identity and `off` without one.
    pub fn inbound_tls(&self) -> InboundTlsMode {
        match self.inbound.as_ref().and_then(|inbound| inbound.tls) {
            Some(mode) => mode,
            None if self.tls.is_some() => InboundTlsMode::Strict,
            None => InboundTlsMode::Off,
        }
    }
}

/// The checks of the TLS fields that the document alone can make; the files are read by
/// the build floor's check.
pub(crate) fn check(config: &Config, issues: &mut Vec<Issue>) {
    let root = FieldPath::root();
    if let Some(inbound) = &config.inbound {
        let at = root.key("inbound");
        let mode = config.inbound_tls();
        if mode != InboundTlsMode::Off && config.tls.is_none() {
            issues.push(Issue::at(
                at.key("tls"),
                "mutual TLS needs the sidecar's own certificate: add a top-level `tls` \
                 section (cert, key, bundle)",
            ));
        }
        let authorizes = inbound.allow.is_some() || !inbound.authorize.is_empty();
        if authorizes && mode == InboundTlsMode::Off {
            issues.push(Issue::at(
                at.key(if inbound.allow.is_some() {
                    "allow"
                } else {
                    "authorize"
                }),
                "authorization needs callers' identities: set `inbound.tls` to strict or \
                 permissive",
            ));
        }
        if let Some(allow) = &inbound.allow {
            check_allow(&at.key("allow"), allow, issues);
        }
        for (i, rule) in inbound.authorize.iter().enumerate() {
            let at = at.key("authorize").index(i);
            check_allow(&at.key("allow"), &rule.allow, issues);
            super::references::check_route_match(&at.key("match"), &rule.matches, issues);
        }
    }
    for (name, service) in &config.services {
        if let Some(tls) = &service.tls {
            let at = root.key("services").key(name).key("tls");
            check_client(config, &at, tls, issues);
        }
    }
    for (name, registry) in &config.registries {
        let at = root.key("registries").key(name);
        if let Some(tls) = registry.etcd.as_ref().and_then(|etcd| etcd.tls.as_ref()) {
            check_external(config, &at.key("etcd").key("tls"), tls, issues);
        }
        if let Some(tls) = registry
            .consul
            .as_ref()
            .and_then(|consul| consul.tls.as_ref())
        {
            check_external(config, &at.key("consul").key("tls"), tls, issues);
        }
    }
    if let Some(tls) = &config.tracing.tls {
        check_external(config, &root.key("tracing").key("tls"), tls, issues);
        let endpoint = config.tracing.endpoint.as_deref().unwrap_or_default();
        if !endpoint.starts_with("https://") {
            issues.push(Issue::at(
                root.key("tracing").key("endpoint"),
                "a `tracing.tls` block needs an https:// collector endpoint",
            ));
        }
    }
}

/// The checks of a client `tls` block toward a server outside the mesh (a registry, the
/// trace collector), at `at`.
fn check_external(config: &Config, at: &FieldPath, tls: &TlsSection, issues: &mut Vec<Issue>) {
    if tls.mesh {
        issues.push(Issue::at(
            at.key("mesh"),
            "only a service's endpoints can be mesh peers; name a `ca` (and `cert`, `key`)",
        ));
        return;
    }
    check_client(config, at, tls, issues);
}

impl Config {
    /// Every private key file the config names: the sidecar's own (`tls.key`) and each
    /// client block's, once each, in document order.
    pub fn private_key_files(&self) -> Vec<&std::path::Path> {
        let services = self.services.values().map(|s| s.tls.as_ref());
        let registries = self.registries.values().flat_map(|r| {
            let etcd = r.etcd.as_ref().and_then(|etcd| etcd.tls.as_deref());
            let consul = r.consul.as_ref().and_then(|consul| consul.tls.as_deref());
            [etcd, consul]
        });
        let clients = services
            .chain(registries)
            .chain([self.tracing.tls.as_ref()])
            .flatten()
            .filter_map(|tls| tls.key.as_deref());
        let mut keys: Vec<&std::path::Path> = Vec::new();
        for key in self
            .tls
            .as_ref()
            .map(|tls| tls.key.as_path())
            .into_iter()
            .chain(clients)
        {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }
}

/// The checks of a client `tls` block at `at`.
pub(crate) fn check_client(
    config: &Config,
    at: &FieldPath,
    tls: &TlsSection,
    issues: &mut Vec<Issue>,
) {
    if tls.mesh {
        if config.tls.is_none() {
            issues.push(Issue::at(
                at.key("mesh"),
                "mesh TLS presents the sidecar's own certificate: add a top-level `tls` \
                 section (cert, key, bundle)",
            ));
        }
        for (field, set) in [
            ("server_name", tls.server_name.is_some()),
            ("ca", tls.ca.is_some()),
            ("cert", tls.cert.is_some()),
            ("key", tls.key.is_some()),
        ] {
            if set {
                issues.push(Issue::at(
                    at.key(field),
                    "not with `mesh: true`: a mesh peer is checked against the trust bundle \
                     and its identity, with the sidecar's own certificate",
                ));
            }
        }
        if let Some(identity) = &tls.identity {
            if !is_identity(identity) {
                issues.push(Issue::at(
                    at.key("identity"),
                    format!(
                        "`{identity}` is neither a service name ({SERVICE_NAME_RULE}) nor a \
                         SPIFFE ID (spiffe://<trust domain>/<service>)"
                    ),
                ));
            }
        }
    } else {
        if tls.identity.is_some() {
            issues.push(Issue::at(
                at.key("identity"),
                "an expected identity needs `mesh: true` (outside the mesh, `server_name` is \
                 what the certificate is checked against)",
            ));
        }
        if tls.cert.is_some() != tls.key.is_some() {
            let missing = if tls.cert.is_some() { "key" } else { "cert" };
            issues.push(Issue::at(
                at.key(missing),
                "a client certificate needs both `cert` and `key`",
            ));
        }
    }
}

fn check_allow(at: &FieldPath, allow: &[String], issues: &mut Vec<Issue>) {
    for (i, entry) in allow.iter().enumerate() {
        if entry != ALLOW_TRUST_DOMAIN && !is_identity(entry) {
            issues.push(Issue::at(
                at.index(i),
                format!(
                    "`{entry}` is neither `*` (the whole trust domain), a service name \
                     ({SERVICE_NAME_RULE}) nor a SPIFFE ID (spiffe://<trust domain>/<service>)"
                ),
            ));
        }
    }
}

/// A service name, or something that looks like a SPIFFE ID (the tls floor parses it).
fn is_identity(text: &str) -> bool {
    is_service_name(text) || text.starts_with("spiffe://")
}
