//! The TLS sections -> the sidecar's credentials, and how each service's endpoints are
//! reached (mutual TLS with a meshed sidecar, TLS to an external server, or plaintext
//! upgraded where a registry advertises mutual TLS).

use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::config::{Destination, FieldPath, MeshTlsSection, TlsSection};
use crate::tls::{
    CredentialFiles, Credentials, CredentialsError, ExternalTls, Identity, RequiredIdentity,
    SPIFFE_SCHEME,
};
use crate::upstream::{Advertised, EndpointTls, UpstreamTls};

use super::BuildError;

/// The sidecar's own certificate, key and trust bundle, read and checked (the leaf must
/// carry one SPIFFE identity and chain to the bundle). A refusal names the field of the
/// file at fault.
pub fn mesh_credentials(section: &MeshTlsSection) -> Result<Arc<Credentials>, BuildError> {
    let files = CredentialFiles {
        certificate: section.cert.clone(),
        private_key: section.key.clone(),
        trust_bundle: section.bundle.clone(),
    };
    Credentials::load(files, RequiredIdentity::Any)
        .map(Arc::new)
        .map_err(|error| refused(section, &error))
}

/// `error` at the field that names its file.
fn refused(section: &MeshTlsSection, error: &CredentialsError) -> BuildError {
    let field = if error.file == section.key {
        "key"
    } else if error.file == section.bundle {
        "bundle"
    } else {
        "cert"
    };
    BuildError::at(FieldPath::root().key(field), error)
}

/// A client `tls` block outside the mesh -> a client config read from its files (no
/// ALPN: the caller sets what it speaks). A `mesh` block is refused here: only a
/// service's endpoints can be meshed peers.
pub fn external_tls(section: &TlsSection) -> Result<rustls::ClientConfig, BuildError> {
    if section.mesh {
        return Err(BuildError::at(
            FieldPath::root().key("mesh"),
            "only a service's endpoints can be mesh peers; name a `ca` (and `cert`, `key`)",
        ));
    }
    let external = ExternalTls {
        ca: section.ca.clone(),
        client: section.cert.clone().zip(section.key.clone()),
    };
    external.client_config().map_err(|error| {
        let field = if section.ca.as_ref() == Some(&error.file) {
            "ca"
        } else if section.key.as_ref() == Some(&error.file) {
            "key"
        } else if section.cert.as_ref() == Some(&error.file) {
            "cert"
        } else {
            "ca"
        };
        BuildError::at(FieldPath::root().key(field), error)
    })
}

/// How a service reaches its endpoints.
#[derive(Debug, Clone, Copy)]
pub struct ServiceTls<'a> {
    /// The service's key in `services`, for logs.
    pub service: &'a str,
    /// Its `tls` block.
    pub section: Option<&'a TlsSection>,
    /// The name it is discovered by (`discovery.name`, else the service's key): the
    /// default identity of a meshed peer.
    pub discovery_name: &'a str,
    /// Whether its endpoints come from a registry (whose entries may advertise mutual TLS).
    pub discovered: bool,
    /// The host name every one of its static endpoints is written with, when they share
    /// one (`api.example.com:443`): the default `server_name` outside the mesh.
    pub endpoint_host: Option<&'a str>,
}

/// The host name all of `endpoints` are written with, if they are all names of one host.
pub fn sole_endpoint_host(endpoints: &[Destination]) -> Option<&str> {
    let mut hosts = endpoints.iter().map(|endpoint| match endpoint {
        Destination::Name { host, .. } => Some(host.trim_end_matches('.')),
        Destination::Addr(_) => None,
    });
    let first = hosts.next()??;
    hosts.all(|host| host == Some(first)).then_some(first)
}

/// A service's `tls` block -> its endpoints' TLS, with `own` the sidecar's credentials
/// (top-level `tls`). A refusal names a field of the block.
///
/// Without a block, a discovered service is upgraded to mutual TLS endpoint by endpoint
/// where the registry advertises it (`remora_mtls`), expecting the identity the caller
/// names the service by; without credentials it stays plaintext (and says so once).
pub fn endpoint_tls(
    service: &ServiceTls<'_>,
    own: Option<&Arc<Credentials>>,
) -> Result<EndpointTls, BuildError> {
    let Some(section) = service.section else {
        return Ok(advertised(service, own));
    };
    let tls = if section.mesh {
        let own = own.ok_or_else(|| {
            BuildError::at(
                FieldPath::root().key("mesh"),
                "mesh TLS presents the sidecar's own certificate: add a top-level `tls` \
                 section (cert, key, bundle)",
            )
        })?;
        let expected = expected_identity(section.identity.as_deref(), service.discovery_name, own)?;
        mesh_tls(own, expected)?
    } else {
        let server_name = external_server_name(section, service.endpoint_host)?;
        UpstreamTls::new(external_tls(section)?, server_name)
    };
    Ok(EndpointTls::Always(Arc::new(tls)))
}

/// What a meshed peer must present: `identity` (a service name of the sidecar's own
/// trust domain, or a full SPIFFE ID), else the service's discovery name in that domain.
fn expected_identity(
    identity: Option<&str>,
    discovery_name: &str,
    own: &Credentials,
) -> Result<Identity, BuildError> {
    let at = FieldPath::root().key("identity");
    if let Some(id) = identity.filter(|id| id.starts_with(SPIFFE_SCHEME)) {
        return Identity::parse(id).map_err(|e| BuildError::at(at, e));
    }
    let material = own.current();
    let Some(me) = material.identity() else {
        return Err(BuildError::at(
            at,
            "the sidecar's own certificate names no trust domain: write a full SPIFFE ID",
        ));
    };
    let name = identity.unwrap_or(discovery_name);
    Identity::try_new(me.trust_domain().clone(), name).map_err(|e| {
        let hint = if identity.is_none() {
            " (the service's discovery name): set `identity`"
        } else {
            ""
        };
        BuildError::at(at, format!("{e}{hint}"))
    })
}

/// Mutual TLS with the sidecar's own certificate, accepting only `expected`. The SNI is
/// the expected service name (the verifier does not read it).
fn mesh_tls(own: &Arc<Credentials>, expected: Identity) -> Result<UpstreamTls, BuildError> {
    let server_name = ServerName::try_from(expected.service().to_string())
        .or_else(|_| ServerName::try_from(expected.trust_domain().to_string()))
        .map_err(|e| BuildError::at(FieldPath::root().key("identity"), e))?;
    let config = crate::tls::client_config(own, expected)
        .map_err(|e| BuildError::at(FieldPath::root().key("mesh"), e))?;
    Ok(UpstreamTls::new(config, server_name))
}

/// The name an external server's certificate is checked against, and the SNI.
///
/// NOTE: required, since endpoints are addresses today; an IP address is accepted only
/// when written here (checked against the certificate's IP SANs, no SNI sent).
fn external_server_name(
    section: &TlsSection,
    endpoint_host: Option<&str>,
) -> Result<ServerName<'static>, BuildError> {
    let at = FieldPath::root().key("server_name");
    let Some(name) = section.server_name.as_deref().or(endpoint_host) else {
        return Err(BuildError::at(
            at,
            "TLS outside the mesh needs `server_name`, the name the server's certificate \
             carries, unless every endpoint is written with one host name (for addresses, \
             write the IP address here to check the certificate against it)",
        ));
    };
    let name = name.to_string();
    ServerName::try_from(name.clone()).map_err(|_| {
        BuildError::at(
            at,
            format!("`{name}` is neither a DNS name nor an IP address"),
        )
    })
}

/// A service without a `tls` block: plaintext, upgraded where a registry advertises
/// mutual TLS and the sidecar can speak it.
fn advertised(service: &ServiceTls<'_>, own: Option<&Arc<Credentials>>) -> EndpointTls {
    if !service.discovered {
        return EndpointTls::Plaintext;
    }
    let name: Arc<str> = Arc::from(service.service);
    let Some(own) = own else {
        return EndpointTls::Advertised(Arc::new(Advertised::plaintext(name)));
    };
    let upgrade = expected_identity(None, service.discovery_name, own).and_then(|expected| {
        let text = expected.to_string();
        Ok((mesh_tls(own, expected)?, text))
    });
    match upgrade {
        Ok((tls, expected)) => EndpointTls::Advertised(Arc::new(Advertised::upgrade_to(
            name,
            Arc::new(tls),
            expected,
        ))),
        Err(error) => {
            // A registry whose names are no identities (DNS `host:port`) advertises nothing.
            tracing::debug!(service = service.service, %error, "no mutual TLS upgrade");
            EndpointTls::Plaintext
        }
    }
}
