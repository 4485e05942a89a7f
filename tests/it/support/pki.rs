//! Certificates for the tests that reach a server outside the mesh over TLS (etcd,
//! Consul, an OTLP collector): one CA, a server certificate for 127.0.0.1 and
//! localhost, a client certificate, and a second CA that trusts none of them; all
//! written as PEM files, made with `remora::tls::issue`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use remora::tls::issue::{CertificateAuthority, Validity};
use remora::tls::{ExternalTls, Identity, TrustDomain};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PEM files in a temporary directory, kept while it lives.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The CA of the server and the client certificates.
    pub ca: PathBuf,
    /// A certificate for 127.0.0.1 and localhost, and its key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (service `orders`), and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that issued none of the above.
    pub other_ca: PathBuf,
}

impl Pki {
    /// New keys and certificates, valid for an hour.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let validity = || Validity::from_now(Duration::from_secs(3600));
        let domain = TrustDomain::parse("test.local").unwrap();
        let ca = CertificateAuthority::generate(&domain, validity()).unwrap();
        let (ca_path, _) = ca.write(&dir.path().join("ca")).unwrap();
        let (server_cert, server_key) = ca
            .issue_host(&["127.0.0.1", "localhost"], validity())
            .unwrap()
            .write(dir.path(), "server")
            .unwrap();
        let identity = Identity::try_new(domain.clone(), "orders").unwrap();
        let (client_cert, client_key) = ca
            .issue(&identity, validity())
            .unwrap()
            .write(dir.path())
            .unwrap();
        let other = CertificateAuthority::generate(&domain, validity()).unwrap();
        let (other_ca, _) = other.write(&dir.path().join("other")).unwrap();
        Pki {
            dir,
            ca: ca_path,
            server_cert,
            server_key,
            client_cert,
            client_key,
            other_ca,
        }
    }

    /// A client config trusting `ca`, presenting the client certificate when `present`.
    pub fn client(&self, ca: &Path, present: bool) -> rustls::ClientConfig {
        let external = ExternalTls {
            ca: Some(ca.to_path_buf()),
            client: present.then(|| (self.client_cert.clone(), self.client_key.clone())),
        };
        external.client_config().unwrap()
    }

    /// A server config presenting the server certificate, offering `alpn`, and requiring
    /// a client certificate of the CA when `require_client`.
    pub fn server(&self, alpn: &[&[u8]], require_client: bool) -> Arc<rustls::ServerConfig> {
        let provider = remora::tls::provider();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.server_cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&self.ca).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}
