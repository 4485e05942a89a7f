//! TLS to servers outside the mesh (an external API, etcd, Consul, a trace collector):
//! the server chains to a CA file or the system's roots and is checked against its name
//! as usual; remora presents a client certificate when one is configured. The files
//! are re-read when they change, as the mesh's own are ([`ExternalTls::client_config`]).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::certificate::CertificateInfo;
use super::credentials::{pem_problem, read_certificates, trust_anchors};
use super::error::{CredentialsError, Problem};
use super::watch::follow_files;

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
    /// now and kept current with them: from its first handshake on (so a config built
    /// only to validate watches nothing), the files are watched and re-read when they
    /// change, for as long as a config built here is alive. New handshakes use the new
    /// CA and client certificate; a broken or expired set is refused and logged, and the
    /// previous one keeps serving. A client certificate that has expired is refused,
    /// like the mesh's own.
    pub fn client_config(&self) -> Result<ClientConfig, CredentialsError> {
        let provider = super::provider();
        let material = Arc::new(ExternalMaterial {
            current: ArcSwap::from_pointee(Loaded::read(self, &provider)?),
            files: self.clone(),
            provider: provider.clone(),
            watching: AtomicBool::new(false),
        });
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| {
                CredentialsError::new(
                    self.ca.clone().unwrap_or_default(),
                    Problem::BadTrustAnchor(e.to_string()),
                )
            })?
            // `dangerous()` is rustls's only door to a verifier that can change: this
            // one is rustls's own WebPKI verifier (chain and host name), rebuilt with
            // each CA file.
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CurrentServerVerifier(material.clone())))
            .with_client_cert_resolver(Arc::new(CurrentClientCertificate(material)));
        // As for the mesh: a resumed session would skip the certificates, so a rotated
        // client certificate or CA file would apply only once the tickets ran out.
        config.resumption = Resumption::disabled();
        Ok(config)
    }

    fn paths(&self) -> Vec<&PathBuf> {
        let mut paths: Vec<&PathBuf> = self.ca.iter().collect();
        if let Some((cert, key)) = &self.client {
            paths.push(cert);
            paths.push(key);
        }
        paths
    }
}

/// The files of an [`ExternalTls`], as last read successfully.
struct ExternalMaterial {
    files: ExternalTls,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Loaded>,
    /// Whether the files are followed (from the first handshake on).
    watching: AtomicBool,
}

/// One consistent read of the files.
struct Loaded {
    verifier: Arc<WebPkiServerVerifier>,
    certified: Option<Arc<CertifiedKey>>,
    /// A hash of the bytes read, to tell a change from a touch.
    fingerprint: u64,
}

impl Loaded {
    fn read(files: &ExternalTls, provider: &Arc<CryptoProvider>) -> Result<Self, CredentialsError> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let roots = match &files.ca {
            Some(ca) => {
                let bytes = read(ca)?;
                bytes.hash(&mut hasher);
                trust_anchors(&bytes).map_err(|p| CredentialsError::new(ca, p))?
            }
            None => system_roots()?,
        };
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| {
                    CredentialsError::new(
                        files.ca.clone().unwrap_or_default(),
                        Problem::BadTrustAnchor(e.to_string()),
                    )
                })?;
        let certified = match &files.client {
            None => None,
            Some((cert, key)) => {
                let cert_bytes = read(cert)?;
                let key_bytes = read(key)?;
                cert_bytes.hash(&mut hasher);
                key_bytes.hash(&mut hasher);
                let chain = read_certificates(&cert_bytes, "certificate")
                    .map_err(|p| CredentialsError::new(cert, p))?;
                let info = CertificateInfo::parse(&chain[0])
                    .map_err(|p| CredentialsError::new(cert, p))?;
                info.check_validity(SystemTime::now())
                    .map_err(|p| CredentialsError::new(cert, p))?;
                let private_key = PrivateKeyDer::from_pem_slice(&key_bytes)
                    .map_err(|e| CredentialsError::new(key, pem_problem(e, "private key")))?;
                let signing = provider
                    .key_provider
                    .load_private_key(private_key)
                    .map_err(|e| CredentialsError::new(key, Problem::UnusableKey(e.to_string())))?;
                let certified = CertifiedKey::new(chain, signing);
                certified
                    .keys_match()
                    .map_err(|_| CredentialsError::new(key, Problem::KeyMismatch(cert.clone())))?;
                Some(Arc::new(certified))
            }
        };
        Ok(Self {
            verifier,
            certified,
            fingerprint: hasher.finish(),
        })
    }
}

impl ExternalMaterial {
    /// Follows the files while `material` is alive (the task holds it weakly), once,
    /// when called inside a tokio runtime.
    fn follow(material: &Arc<Self>) {
        if material.watching.load(Ordering::Relaxed)
            || tokio::runtime::Handle::try_current().is_err()
            || material.watching.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let weak = Arc::downgrade(material);
        let mut last = material.current.load().fingerprint;
        let followed = follow_files(&material.files.paths(), move || {
            let Some(material) = weak.upgrade() else {
                return false;
            };
            match Loaded::read(&material.files, &material.provider) {
                Ok(loaded) if loaded.fingerprint == last => {}
                Ok(loaded) => {
                    last = loaded.fingerprint;
                    material.current.store(Arc::new(loaded));
                    tracing::info!(files = ?material.files.paths(), "TLS client files reloaded");
                }
                Err(error) => tracing::error!(
                    "TLS client files reload refused, the previous ones keep serving: {error}"
                ),
            }
            true
        });
        if let Err(error) = followed {
            tracing::warn!(%error, "TLS client files are not watched for changes");
        }
    }
}

impl fmt::Debug for ExternalMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalMaterial")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The server verifier of the current read: rustls's WebPKI verifier.
#[derive(Debug)]
struct CurrentServerVerifier(Arc<ExternalMaterial>);

impl ServerCertVerifier for CurrentServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        ExternalMaterial::follow(&self.0);
        self.0.current.load().verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current
            .load()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current
            .load()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current.load().verifier.supported_verify_schemes()
    }
}

/// The client certificate of the current read, if one is configured.
#[derive(Debug)]
struct CurrentClientCertificate(Arc<ExternalMaterial>);

impl ResolvesClientCert for CurrentClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current.load().certified.clone()
    }

    fn has_certs(&self) -> bool {
        self.0.files.client.is_some()
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
