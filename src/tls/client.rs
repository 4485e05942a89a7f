//! TLS to servers outside the mesh (an external API, etcd, Consul, a trace collector):
//! the server chains to a CA file or the system's roots and is checked against its name
//! as usual; remora presents a client certificate when one is configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::{ClientConfig, RootCertStore};

use super::certificate::CertificateInfo;
use super::credentials::{pem_problem, read_certificates, trust_anchors};
use super::error::{CredentialsError, Problem};

/// Where the material of a TLS client outside the mesh lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalTls {
    /// PEM CA certificates the server must chain to; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// A PEM client certificate chain and its key, to present when the server asks.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl ExternalTls {
    /// A client config (no ALPN; the caller sets what it speaks), read from the files
    /// now. A client certificate that has expired is refused, like the mesh's own.
    pub fn client_config(&self) -> Result<ClientConfig, CredentialsError> {
        let provider = super::provider();
        let roots = match &self.ca {
            Some(ca) => trust_anchors(&read(ca)?).map_err(|p| CredentialsError::new(ca, p))?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| {
                CredentialsError::new(
                    self.ca.clone().unwrap_or_default(),
                    Problem::BadTrustAnchor(e.to_string()),
                )
            })?
            .with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certificates(&read(cert)?, "certificate")
                    .map_err(|p| CredentialsError::new(cert, p))?;
                let info = CertificateInfo::parse(&chain[0])
                    .map_err(|p| CredentialsError::new(cert, p))?;
                info.check_validity(SystemTime::now())
                    .map_err(|p| CredentialsError::new(cert, p))?;
                let private_key = PrivateKeyDer::from_pem_slice(&read(key)?)
                    .map_err(|e| CredentialsError::new(key, pem_problem(e, "private key")))?;
                builder
                    .with_client_auth_cert(chain, private_key)
                    .map_err(|e| CredentialsError::new(key, Problem::UnusableKey(e.to_string())))?
            }
        };
        Ok(config)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialsError> {
    std::fs::read(path).map_err(|e| CredentialsError::new(path, Problem::Unreadable(e)))
}

/// The operating system's root certificates (on Linux the distribution's bundle, or
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`).
fn system_roots() -> Result<RootCertStore, CredentialsError> {
    static ROOTS: std::sync::OnceLock<Result<Arc<RootCertStore>, String>> =
        std::sync::OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none installed".to_string(), ToString::to_string);
            return Err(why);
        }
        Ok(Arc::new(roots))
    });
    match roots {
        Ok(roots) => Ok(RootCertStore::clone(roots)),
        Err(why) => Err(CredentialsError::new(
            "system roots",
            Problem::NoSystemRoots(why.clone()),
        )),
    }
}
