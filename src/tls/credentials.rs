//! A sidecar's own certificate, key and trust bundle, read from PEM files and swapped
//! whole when the files change.
//!
//! [`Credentials`] holds one [`Material`] behind an `ArcSwap`: every new handshake loads
//! the current one (the certificate it presents, the bundle it verifies the peer
//! against). [`Credentials::reload`] reads the files again and swaps only a set that
//! passes every check; a broken set is refused with the file and the reason, and the
//! previous material keeps serving.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, InconsistentKeys, RootCertStore, SignatureScheme};

use super::certificate::CertificateInfo;
use super::error::{CredentialsError, Problem};
use super::identity::Identity;
use super::key_permissions::key_file_exposure;

/// Where a sidecar's certificate material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    /// PEM certificates: the leaf first, then any intermediates.
    pub certificate: PathBuf,
    /// The PEM private key of the leaf (PKCS#8, SEC1 or PKCS#1).
    pub private_key: PathBuf,
    /// PEM CA certificates that peers' certificates must chain to.
    pub trust_bundle: PathBuf,
}

/// What the loaded certificate must say about whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequiredIdentity {
    /// Any certificate that chains to the bundle (no SPIFFE identity needed).
    Unchecked,
    /// A certificate with exactly one SPIFFE identity, whichever.
    Any,
    /// A certificate with exactly this SPIFFE identity: a rotated certificate of another
    /// service is refused.
    Exactly(Identity),
}

/// One consistent set of certificate material: what a handshake uses from start to end.
pub struct Material {
    certified: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    /// Verifies clients against `roots`; rebuilt with them.
    client_verifier: Arc<dyn ClientCertVerifier>,
    info: CertificateInfo,
    identity: Option<Identity>,
    /// A hash of the files' bytes this was built from, to tell a change from a touch.
    fingerprint: u64,
}

impl Material {
    /// The SPIFFE identity of the certificate (`None` only under
    /// [`RequiredIdentity::Unchecked`] for a certificate without one).
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Serial number and validity of the leaf certificate.
    pub fn certificate(&self) -> &CertificateInfo {
        &self.info
    }

    /// The certificate chain and signing key handed to handshakes.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// The CA certificates peers must chain to.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    pub(super) fn client_verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_verifier
    }

    pub(super) fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("identity", &self.identity)
            .field("serial", &self.info.serial_hex())
            .field(
                "not_after",
                &humantime::format_rfc3339_seconds(self.info.not_after()),
            )
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// A sidecar's certificate material, current and reloadable. It is the certificate
/// resolver of both sides: servers present it to clients, clients to servers.
///
/// NOTE: a reload changes what *new* handshakes use. Connections already established
/// keep the keys they agreed on and are untouched: rustls consults the resolver and the
/// verifiers only during a handshake.
pub struct Credentials {
    files: CredentialFiles,
    required: RequiredIdentity,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Material>,
}

impl Credentials {
    /// Reads and checks `files` with remora's crypto provider ([`super::provider`]).
    pub fn load(
        files: CredentialFiles,
        required: RequiredIdentity,
    ) -> Result<Self, CredentialsError> {
        let provider = super::provider();
        let contents = Contents::read(&files)?;
        let material = build(&files, &required, &provider, &contents)?;
        Ok(Self {
            files,
            required,
            provider,
            current: ArcSwap::from_pointee(material),
        })
    }

    /// The material new handshakes use.
    pub fn current(&self) -> Arc<Material> {
        self.current.load_full()
    }

    /// Reads the files again and swaps the new material in if every check passes;
    /// otherwise keeps the current material and says which file is wrong and why.
    pub fn reload(&self) -> Result<Arc<Material>, CredentialsError> {
        let contents = Contents::read(&self.files)?;
        self.apply(&contents)
    }

    /// Swaps in the material `contents` make, if it passes every check.
    pub(super) fn apply(&self, contents: &Contents) -> Result<Arc<Material>, CredentialsError> {
        let material = Arc::new(build(
            &self.files,
            &self.required,
            &self.provider,
            contents,
        )?);
        self.current.store(material.clone());
        Ok(material)
    }

    /// The files the material is read from.
    pub fn files(&self) -> &CredentialFiles {
        &self.files
    }

    /// The crypto provider every config built on these credentials uses.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("files", &self.files)
            .field("required", &self.required)
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The bytes of the three files, read once so that checks and fingerprint agree.
pub(super) struct Contents {
    certificate: Vec<u8>,
    private_key: Vec<u8>,
    trust_bundle: Vec<u8>,
}

impl Contents {
    pub(super) fn read(files: &CredentialFiles) -> Result<Self, CredentialsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| CredentialsError::new(path, Problem::Unreadable(e)))
        };
        Ok(Self {
            certificate: read(&files.certificate)?,
            private_key: read(&files.private_key)?,
            trust_bundle: read(&files.trust_bundle)?,
        })
    }

    /// Tells one set of bytes from another (not a security boundary: a collision would
    /// only delay a reload until the next change).
    pub(super) fn fingerprint(&self) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        self.certificate.hash(&mut hasher);
        self.private_key.hash(&mut hasher);
        self.trust_bundle.hash(&mut hasher);
        hasher.finish()
    }
}

/// Every check, in the order an operator fixes things: each file parses, the leaf is
/// valid now, the key is the leaf's, the identity is right, the leaf chains to the
/// bundle for both client and server use.
fn build(
    files: &CredentialFiles,
    required: &RequiredIdentity,
    provider: &Arc<CryptoProvider>,
    contents: &Contents,
) -> Result<Material, CredentialsError> {
    let cert_error = |problem| CredentialsError::new(&files.certificate, problem);
    let chain = read_certificates(&contents.certificate, "certificate").map_err(cert_error)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.private_key)
        .map_err(|e| CredentialsError::new(&files.private_key, pem_problem(e, "private key")))?;
    let roots = trust_anchors(&contents.trust_bundle)
        .map_err(|problem| CredentialsError::new(&files.trust_bundle, problem))?;

    let info = CertificateInfo::parse(&chain[0]).map_err(cert_error)?;
    info.check_validity(SystemTime::now()).map_err(cert_error)?;
    let certified = certified_key(chain, key, provider, files)?;
    let identity = check_identity(&info, required).map_err(cert_error)?;
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| {
                CredentialsError::new(&files.trust_bundle, Problem::BadTrustAnchor(e.to_string()))
            })?;
    check_chain(
        &certified,
        &roots,
        client_verifier.as_ref(),
        provider,
        files,
    )?;

    if let Some(warning) = key_file_exposure(&files.private_key) {
        tracing::warn!("{warning}");
    }
    Ok(Material {
        certified: Arc::new(certified),
        roots,
        client_verifier,
        info,
        identity,
        fingerprint: contents.fingerprint(),
    })
}

pub(super) fn read_certificates(
    pem_bytes: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let chain = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_problem(e, what))?;
    if chain.is_empty() {
        return Err(Problem::NoPem(what));
    }
    Ok(chain)
}

pub(super) fn trust_anchors(pem_bytes: &[u8]) -> Result<RootCertStore, Problem> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(pem_bytes, "CA certificate")? {
        roots
            .add(certificate)
            .map_err(|e| Problem::BadTrustAnchor(e.to_string()))?;
    }
    Ok(roots)
}

pub(super) fn pem_problem(error: pem::Error, what: &'static str) -> Problem {
    match error {
        pem::Error::NoItemsFound => Problem::NoPem(what),
        other => Problem::MalformedPem(other.to_string()),
    }
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    files: &CredentialFiles,
) -> Result<CertifiedKey, CredentialsError> {
    let key_error = |problem| CredentialsError::new(&files.private_key, problem);
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(Problem::UnusableKey(e.to_string())))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(key_error(Problem::KeyMismatch(files.certificate.clone())))
        }
        Err(other) => Err(key_error(Problem::UnusableKey(format!(
            "cannot compare it with the certificate: {other}"
        )))),
    }
}

fn check_identity(
    info: &CertificateInfo,
    required: &RequiredIdentity,
) -> Result<Option<Identity>, Problem> {
    match required {
        RequiredIdentity::Unchecked => Ok(info.identity().ok()),
        RequiredIdentity::Any => info.identity().map(Some),
        RequiredIdentity::Exactly(expected) => {
            let found = info.identity()?;
            if &found != expected {
                return Err(Problem::UnexpectedIdentity {
                    found,
                    expected: expected.clone(),
                });
            }
            Ok(Some(found))
        }
    }
}

/// The leaf serves both ends of the mesh: a server presents it to clients and a client to
/// servers, so it must verify for both uses (extended key usage `serverAuth` and
/// `clientAuth`, or none).
fn check_chain(
    certified: &CertifiedKey,
    roots: &RootCertStore,
    client_verifier: &dyn ClientCertVerifier,
    provider: &CryptoProvider,
    files: &CredentialFiles,
) -> Result<(), CredentialsError> {
    let untrusted = |reason: String| {
        CredentialsError::new(
            &files.certificate,
            Problem::Untrusted {
                bundle: files.trust_bundle.clone(),
                reason,
            },
        )
    };
    let (leaf, intermediates) = certified
        .cert
        .split_first()
        .expect("read_certificates returns at least one");
    let now = UnixTime::now();
    let parsed = ParsedCertificate::try_from(leaf).map_err(|e| {
        CredentialsError::new(
            &files.certificate,
            Problem::MalformedCertificate(e.to_string()),
        )
    })?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        now,
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| untrusted(describe(&e, "server")))?;
    client_verifier
        .verify_client_cert(leaf, intermediates, now)
        .map_err(|e| untrusted(describe(&e, "client")))?;
    Ok(())
}

/// webpki's verdict in an operator's words.
fn describe(error: &rustls::Error, usage: &str) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "it is issued by a CA the bundle does not hold".to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            "its signature does not verify with the bundle's CA of the same name \
             (another CA with the same subject?)"
                .to_string()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => format!("its extended key usage does not allow {usage} authentication"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::issue::{CertificateAuthority, Validity};
    use crate::tls::test_support::{hour, Pki};
    use crate::tls::TrustDomain;

    fn refused(files: &CredentialFiles, required: RequiredIdentity) -> CredentialsError {
        Credentials::load(files.clone(), required).unwrap_err()
    }

    #[test]
    fn loads_a_valid_set_and_reports_its_identity() {
        let pki = Pki::new();
        let files = pki.write("orders");
        let credentials =
            Credentials::load(files, RequiredIdentity::Exactly(pki.identity("orders"))).unwrap();
        let current = credentials.current();
        assert_eq!(current.identity(), Some(&pki.identity("orders")));
        assert_eq!(current.roots().len(), 1);
        assert_eq!(current.certified_key().cert.len(), 1);
    }

    #[test]
    fn names_the_file_and_what_is_wrong() {
        let pki = Pki::new();
        let files = pki.write("orders");

        let expired =
            Validity::between(SystemTime::now() - 2 * hour(), SystemTime::now() - hour()).unwrap();
        pki.issue("stale", expired).write(pki.dir.path()).unwrap();
        let error = refused(&pki.files("stale"), RequiredIdentity::Any);
        assert_eq!(error.file, pki.path("stale.pem"));
        assert!(matches!(error.problem, Problem::Expired(_)), "{error}");
        assert!(
            error.to_string().contains("certificate expired at "),
            "{error}"
        );

        let future =
            Validity::between(SystemTime::now() + hour(), SystemTime::now() + 2 * hour()).unwrap();
        pki.issue("early", future).write(pki.dir.path()).unwrap();
        let error = refused(&pki.files("early"), RequiredIdentity::Any);
        assert!(matches!(error.problem, Problem::NotYetValid(_)), "{error}");

        pki.write("payments");
        let mismatched = CredentialFiles {
            private_key: pki.path("payments-key.pem"),
            ..files.clone()
        };
        let error = refused(&mismatched, RequiredIdentity::Any);
        assert_eq!(error.file, pki.path("payments-key.pem"));
        assert!(
            error.to_string().contains("key does not match certificate"),
            "{error}"
        );

        let error = refused(&files, RequiredIdentity::Exactly(pki.identity("payments")));
        assert_eq!(
            error.problem.to_string(),
            "identity spiffe://example.org/orders is not the expected spiffe://example.org/payments"
        );

        let missing = CredentialFiles {
            trust_bundle: pki.path("absent.pem"),
            ..files.clone()
        };
        let error = refused(&missing, RequiredIdentity::Any);
        assert_eq!(error.file, pki.path("absent.pem"));
        assert!(matches!(error.problem, Problem::Unreadable(_)), "{error}");

        std::fs::write(pki.path("empty.pem"), "no pem here\n").unwrap();
        let empty = CredentialFiles {
            certificate: pki.path("empty.pem"),
            ..files.clone()
        };
        let error = refused(&empty, RequiredIdentity::Any);
        assert_eq!(
            error.to_string(),
            format!(
                "{}: no certificate in PEM form",
                pki.path("empty.pem").display()
            )
        );
    }

    #[test]
    fn requires_a_spiffe_identity_unless_told_not_to() {
        let pki = Pki::new();
        let files = pki.write("orders");
        // A certificate without a URI SAN, signed by the same CA.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["plain.example.org".to_string()]).unwrap();
        let plain = params.signed_by(&key, pki.ca.issuer()).unwrap();
        std::fs::write(pki.path("plain.pem"), plain.pem()).unwrap();
        std::fs::write(pki.path("plain-key.pem"), key.serialize_pem()).unwrap();
        let plain_files = CredentialFiles {
            certificate: pki.path("plain.pem"),
            private_key: pki.path("plain-key.pem"),
            ..files
        };
        let error = refused(&plain_files, RequiredIdentity::Any);
        assert_eq!(
            error.problem.to_string(),
            "no SPIFFE identity: the certificate has no `spiffe://` URI SAN"
        );
        let credentials = Credentials::load(plain_files, RequiredIdentity::Unchecked).unwrap();
        assert_eq!(credentials.current().identity(), None);
    }

    #[test]
    fn refuses_a_certificate_the_bundle_does_not_vouch_for() {
        let pki = Pki::new();
        let files = pki.write("orders");
        let domain = TrustDomain::parse("example.org").unwrap();
        let other = CertificateAuthority::generate(&domain, Validity::from_now(hour())).unwrap();
        std::fs::write(pki.path("other-ca.pem"), other.certificate_pem()).unwrap();
        let error = refused(
            &CredentialFiles {
                trust_bundle: pki.path("other-ca.pem"),
                ..files
            },
            RequiredIdentity::Any,
        );
        assert_eq!(error.file, pki.path("orders.pem"));
        assert!(
            error
                .to_string()
                .contains("does not chain to the trust bundle")
                && error
                    .to_string()
                    .contains("issued by a CA the bundle does not hold"),
            "{error}"
        );
    }

    #[test]
    fn a_refused_reload_keeps_the_current_material() {
        let pki = Pki::new();
        let files = pki.write("orders");
        let credentials = Credentials::load(files.clone(), RequiredIdentity::Any).unwrap();
        let before = credentials.current().certificate().serial_hex();

        std::fs::write(
            &files.certificate,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n",
        )
        .unwrap();
        let error = credentials.reload().unwrap_err();
        assert!(matches!(error.problem, Problem::MalformedPem(_)), "{error}");
        assert_eq!(credentials.current().certificate().serial_hex(), before);

        pki.write("orders");
        let after = credentials.reload().unwrap().certificate().serial_hex();
        assert_ne!(after, before);
        assert_eq!(credentials.current().certificate().serial_hex(), after);
    }
}
