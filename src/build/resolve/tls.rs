//! The TLS sections -> the sidecar's credentials.

use std::sync::Arc;

use crate::config::{FieldPath, MeshTlsSection, TlsSection};
use crate::tls::{CredentialFiles, Credentials, CredentialsError, ExternalTls, RequiredIdentity};

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
