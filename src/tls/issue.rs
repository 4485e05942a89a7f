//! Issuing a mesh's certificates: what `remora cert ca` and `remora cert issue` do.
//!
//! A CA is a key and a self-signed certificate whose URI SAN is its trust domain's
//! SPIFFE ID (`spiffe://example.org`, as SPIRE's CAs carry), so `issue` can tell which
//! trust domain a CA serves without being told. A service certificate carries the
//! service's SPIFFE ID as its one URI SAN, the service name as a DNS SAN (for ordinary
//! tools that check host names), and the extended key usages `serverAuth` and
//! `clientAuth`: a sidecar presents the same certificate in both directions.
//! [`CertificateAuthority::issue_host`] makes the certificate of a host outside the mesh
//! (IP and DNS SANs, no identity), for servers such as etcd that check a host name.
//!
//! Keys are ECDSA P-256: a small key and certificate (a 64-byte signature), handshakes
//! faster than with RSA-2048 (signing is an order of magnitude cheaper), and every TLS
//! stack verifies it (rustls, OpenSSL, BoringSSL, Go, Java, browsers). Certificates are
//! valid from a minute before issuance: peers' clocks disagree a little.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_cert::der::{Decode, Encode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::name::Name;
use x509_cert::Certificate;

use super::certificate::CertificateInfo;
use super::identity::{Identity, IdentityError, TrustDomain};

mod host;

pub use host::HostCertificate;

/// The CA certificate's file name in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name in a CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// How far before issuance a certificate becomes valid, for clock skew between peers.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why a CA or a certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `remora cert ca` does not overwrite a CA: its key signs every certificate issued.
    #[error("{}: already exists; remove it or choose another directory", .0.display())]
    Exists(PathBuf),
    /// The CA files are not a usable CA.
    #[error("{}: {reason}", path.display())]
    InvalidCa {
        /// The CA certificate or key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The CA names no trust domain and none was given.
    #[error("the CA names no trust domain (its certificate has no spiffe:// URI SAN): pass --trust-domain")]
    NoTrustDomain,
    /// The identity is in another trust domain than the CA's.
    #[error("the CA is for trust domain {ca}, not {asked}")]
    OtherTrustDomain {
        /// The CA's trust domain.
        ca: TrustDomain,
        /// The identity's.
        asked: TrustDomain,
    },
    /// A trust domain or service name is not valid.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The validity period is empty or not representable.
    #[error("invalid validity: {0}")]
    Validity(String),
    /// The system's random number generator failed.
    #[error("cannot draw a random serial number")]
    Random,
    /// rcgen could not generate the key or the certificate.
    #[error("cannot generate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Validity {
    /// From a minute ago until `duration` from now.
    pub fn from_now(duration: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - BACKDATE,
            not_after: now + duration,
        }
    }

    /// From `not_before` until `not_after` (which may both be in the past, for tests of
    /// expiry).
    pub fn between(not_before: SystemTime, not_after: SystemTime) -> Result<Self, IssueError> {
        if not_after <= not_before {
            return Err(IssueError::Validity(
                "the end must come after the start".to_string(),
            ));
        }
        Ok(Self {
            not_before,
            not_after,
        })
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), IssueError> {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + since_epoch(self.not_before)?;
        params.not_after = epoch + since_epoch(self.not_after)?;
        Ok(())
    }
}

/// A CA: its certificate and the key that signs what it issues.
pub struct CertificateAuthority {
    certificate: CertificateDer<'static>,
    /// The CA's subject, key identifier and key, as issued certificates name them.
    issuer: Issuer<'static, KeyPair>,
    trust_domain: Option<TrustDomain>,
    /// A root goes in no chain; an intermediate follows every leaf it issues.
    self_signed: bool,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("self_signed", &self.self_signed)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new root CA for `trust_domain`, with an ECDSA P-256 key.
    pub fn generate(trust_domain: &TrustDomain, validity: Validity) -> Result<Self, IssueError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let serial = random_serial()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "remora");
        // Each CA its own name: verifiers find an issuer by name, and two CAs of one trust
        // domain (old and new, during a rotation) must not be mistaken for each other.
        let tag: String = serial.to_bytes()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        name.push(
            DnType::CommonName,
            format!("remora CA {trust_domain} {tag}"),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(trust_domain.id())?)];
        params.serial_number = Some(serial);
        validity.apply(&mut params)?;
        let certificate = params.self_signed(&key)?.der().clone();
        Ok(Self {
            certificate,
            issuer: Issuer::new(params, key),
            trust_domain: Some(trust_domain.clone()),
            self_signed: true,
        })
    }

    /// Reads `dir/ca.pem` and `dir/ca-key.pem` (the key as PKCS#8, SEC1 or PKCS#1 PEM).
    pub fn load(dir: &Path) -> Result<Self, IssueError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let invalid = |path: &Path, reason: String| IssueError::InvalidCa {
            path: path.to_path_buf(),
            reason,
        };
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let certificate = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| invalid(&cert_path, format!("no CA certificate in PEM form: {e}")))?;
        let parsed = Certificate::from_der(&certificate)
            .map_err(|e| invalid(&cert_path, format!("malformed certificate: {e}")))?;
        let info =
            CertificateInfo::parse(&certificate).map_err(|e| invalid(&cert_path, e.to_string()))?;
        info.check_validity(SystemTime::now())
            .map_err(|e| invalid(&cert_path, e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| invalid(&key_path, format!("no private key in PEM form: {e}")))
            .and_then(|der| {
                KeyPair::try_from(&der)
                    .map_err(|e| invalid(&key_path, format!("unusable private key: {e}")))
            })?;
        let public_key = parsed
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| invalid(&cert_path, format!("malformed public key: {e}")))?;
        if key.subject_public_key_info() != public_key {
            return Err(invalid(
                &key_path,
                format!("key does not match certificate {}", cert_path.display()),
            ));
        }
        let tbs = parsed.tbs_certificate();
        let mut params = CertificateParams::default();
        params.distinguished_name =
            distinguished_name(tbs.subject()).map_err(|reason| invalid(&cert_path, reason))?;
        params.key_identifier_method = match tbs.get_extension::<SubjectKeyIdentifier>() {
            Ok(Some((_, id))) => KeyIdMethod::PreSpecified(id.0.as_bytes().to_vec()),
            Ok(None) => KeyIdMethod::Sha256,
            Err(e) => return Err(invalid(&cert_path, format!("subject key identifier: {e}"))),
        };
        let trust_domain = info
            .uris()
            .iter()
            .find_map(|uri| TrustDomain::from_id(uri).ok());
        Ok(Self {
            self_signed: tbs.issuer() == tbs.subject(),
            certificate: certificate.into_owned(),
            issuer: Issuer::new(params, key),
            trust_domain,
        })
    }

    /// Writes `dir/ca.pem` and `dir/ca-key.pem` (mode 0600), creating `dir`; refuses to
    /// replace an existing CA.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), IssueError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(IssueError::Exists(path.clone()));
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| IssueError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        write_file(
            &key_path,
            self.issuer.key().serialize_pem().as_bytes(),
            0o600,
        )?;
        write_file(&cert_path, self.certificate_pem().as_bytes(), 0o644)?;
        Ok((cert_path, key_path))
    }

    /// The CA certificate: what a trust bundle holds.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// The CA certificate in PEM form.
    pub fn certificate_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.certificate)
    }

    /// The signing half, for tests that make certificates `issue` would not.
    #[cfg(test)]
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The trust domain the CA names in its URI SAN, if it names one.
    pub fn trust_domain(&self) -> Option<&TrustDomain> {
        self.trust_domain.as_ref()
    }

    /// A certificate for `identity` with a new ECDSA P-256 key.
    pub fn issue(
        &self,
        identity: &Identity,
        validity: Validity,
    ) -> Result<IssuedCertificate, IssueError> {
        if let Some(ca) = &self.trust_domain {
            if ca != identity.trust_domain() {
                return Err(IssueError::OtherTrustDomain {
                    ca: ca.clone(),
                    asked: identity.trust_domain().clone(),
                });
            }
        }
        let sans = vec![
            SanType::URI(Ia5String::try_from(identity.to_string())?),
            SanType::DnsName(Ia5String::try_from(identity.service())?),
        ];
        let (chain, key) = self.sign_leaf(identity.service(), sans, validity)?;
        Ok(IssuedCertificate {
            identity: identity.clone(),
            chain,
            key,
        })
    }

    /// A leaf certificate named `common_name` with `sans`, for both ends of a
    /// connection (`serverAuth` and `clientAuth`), with a new ECDSA P-256 key: the
    /// chain (the leaf, then this CA when it is an intermediate) and the key.
    pub(crate) fn sign_leaf(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        validity: Validity,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>), IssueError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        validity.apply(&mut params)?;
        let leaf = params.signed_by(&key, &self.issuer)?.der().clone();
        let mut chain = vec![leaf];
        if !self.self_signed {
            chain.push(self.certificate.clone());
        }
        Ok((chain, PrivatePkcs8KeyDer::from(key.serialize_der())))
    }
}

/// A service certificate just issued, with its key.
pub struct IssuedCertificate {
    identity: Identity,
    /// The leaf, then the issuing CA when it is an intermediate.
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl IssuedCertificate {
    /// The identity it was issued for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// The chain in PEM form.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|der| pem_encode("CERTIFICATE", der))
            .collect()
    }

    /// The private key in PEM form (PKCS#8, `PRIVATE KEY`).
    pub fn key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", self.key.secret_pkcs8_der())
    }

    /// Writes `dir/<service>.pem` (the chain) and `dir/<service>-key.pem` (mode 0600),
    /// creating `dir`. Each file is written beside its place and renamed into it, so a
    /// watcher never reads half a file; the key goes first, so a watcher that reads the
    /// pair in between sees a mismatch and keeps the old one.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), IssueError> {
        let service = self.identity.service();
        let cert_path = dir.join(format!("{service}.pem"));
        let key_path = dir.join(format!("{service}-key.pem"));
        std::fs::create_dir_all(dir).map_err(|source| IssueError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        write_file(&key_path, self.key_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, self.chain_pem().as_bytes(), 0o644)?;
        Ok((cert_path, key_path))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, IssueError> {
    std::fs::read(path).map_err(|source| IssueError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to a temporary file beside `path` with `mode` and renames it into place.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IssueError> {
    let error = |source| IssueError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = options.open(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(source) = written.and_then(|()| std::fs::rename(&temporary, path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error(source));
    }
    Ok(())
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// 128 random bits, the top one clear so the DER integer stays positive in 16 bytes.
fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; 16];
    super::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| IssueError::Random)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn since_epoch(at: SystemTime) -> Result<Duration, IssueError> {
    at.duration_since(UNIX_EPOCH)
        .map_err(|_| IssueError::Validity("times before 1970 are not supported".to_string()))
}

/// The CA's subject as rcgen builds names: one attribute per RDN, each type once, in
/// UTF8String, PrintableString or IA5String. The issuer name of every certificate issued
/// must equal the CA's subject byte for byte, so a subject that cannot be reproduced
/// exactly is refused rather than approximated.
fn distinguished_name(subject: &Name) -> Result<DistinguishedName, String> {
    let mut name = DistinguishedName::new();
    for rdn in subject.iter_rdn() {
        let mut attributes = rdn.iter();
        let (Some(attribute), None) = (attributes.next(), attributes.next()) else {
            return Err("its subject has a multi-valued RDN, which cannot be reproduced".into());
        };
        let arcs: Vec<u64> = attribute.oid.arcs().map(u64::from).collect();
        let kind = DnType::from_oid(&arcs);
        if name.get(&kind).is_some() {
            return Err(format!(
                "its subject repeats attribute {}, which cannot be reproduced",
                attribute.oid
            ));
        }
        let text = std::str::from_utf8(attribute.value.value())
            .map_err(|_| format!("its subject attribute {} is not text", attribute.oid))?;
        let value = match attribute.value.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_string()),
            Tag::PrintableString => DnValue::PrintableString(
                PrintableString::try_from(text).map_err(|e| e.to_string())?,
            ),
            Tag::Ia5String => {
                DnValue::Ia5String(Ia5String::try_from(text).map_err(|e| e.to_string())?)
            }
            other => {
                return Err(format!(
                    "its subject attribute {} is a {other}, which cannot be reproduced",
                    attribute.oid
                ))
            }
        };
        name.push(kind, value);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::UnixTime;
    use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
    use rustls::sign::CertifiedKey;
    use rustls::RootCertStore;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn domain() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    fn orders() -> Identity {
        Identity::try_new(domain(), "orders").unwrap()
    }

    /// Checks `issued` as its peers will: its key is its certificate's, the chain verifies
    /// against `root` for server and for client use; returns the identity it carries.
    fn verify(
        issued: &IssuedCertificate,
        root: &CertificateDer<'static>,
    ) -> Result<Identity, String> {
        let provider = crate::tls::provider();
        CertifiedKey::from_der(issued.chain().to_vec(), issued.key(), &provider)
            .map_err(|e| e.to_string())?;
        let mut roots = RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let (leaf, intermediates) = issued.chain().split_first().unwrap();
        let parsed = ParsedCertificate::try_from(leaf).map_err(|e| e.to_string())?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| e.to_string())?;
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap()
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| e.to_string())?;
        CertificateInfo::parse(leaf)
            .and_then(|info| info.identity())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_ca_written_and_read_back_issues_what_its_certificate_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let generated =
            CertificateAuthority::generate(&domain(), Validity::from_now(HOUR)).unwrap();
        let (cert_path, _) = generated.write(dir.path()).unwrap();
        let info = CertificateInfo::parse(generated.certificate()).unwrap();
        assert_eq!(info.uris(), ["spiffe://example.org"]);

        let loaded = CertificateAuthority::load(dir.path()).unwrap();
        assert_eq!(loaded.trust_domain(), Some(&domain()));
        assert!(loaded.self_signed);
        let issued = loaded.issue(&orders(), Validity::from_now(HOUR)).unwrap();
        assert_eq!(issued.chain().len(), 1, "a root goes in no chain");
        let written = CertificateDer::from_pem_file(cert_path).unwrap();
        assert_eq!(verify(&issued, &written), Ok(orders()));
    }

    #[test]
    fn an_intermediate_ca_goes_into_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let root = CertificateAuthority::generate(&domain(), Validity::from_now(HOUR)).unwrap();
        // An intermediate made elsewhere: a PrintableString name, no trust domain SAN.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CountryName,
            DnValue::PrintableString("DE".try_into().unwrap()),
        );
        name.push(
            DnType::CommonName,
            DnValue::PrintableString("Issuing CA".try_into().unwrap()),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.key_identifier_method = KeyIdMethod::Sha384;
        params.use_authority_key_identifier_extension = true;
        let intermediate = params.signed_by(&key, root.issuer()).unwrap();
        std::fs::write(dir.path().join(CA_CERT_FILE), intermediate.pem()).unwrap();
        std::fs::write(dir.path().join(CA_KEY_FILE), key.serialize_pem()).unwrap();

        let loaded = CertificateAuthority::load(dir.path()).unwrap();
        assert_eq!(loaded.trust_domain(), None);
        let issued = loaded.issue(&orders(), Validity::from_now(HOUR)).unwrap();
        assert_eq!(issued.chain().len(), 2);
        assert_eq!(&issued.chain()[1], intermediate.der());
        assert_eq!(verify(&issued, root.certificate()), Ok(orders()));
    }

    #[test]
    fn refuses_to_overwrite_a_ca_or_issue_for_another_domain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate(&domain(), Validity::from_now(HOUR)).unwrap();
        ca.write(dir.path()).unwrap();
        let error = ca.write(dir.path()).unwrap_err();
        assert!(matches!(error, IssueError::Exists(_)), "{error}");

        let elsewhere = Identity::parse("spiffe://other.org/orders").unwrap();
        let error = ca.issue(&elsewhere, Validity::from_now(HOUR)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the CA is for trust domain example.org, not other.org"
        );
    }

    #[test]
    fn says_which_ca_file_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let error = CertificateAuthority::load(dir.path()).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "{}: cannot read",
                dir.path().join(CA_CERT_FILE).display()
            )),
            "{error}"
        );
        let ca = CertificateAuthority::generate(&domain(), Validity::from_now(HOUR)).unwrap();
        ca.write(dir.path()).unwrap();
        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(dir.path().join(CA_KEY_FILE), other.serialize_pem()).unwrap();
        let error = CertificateAuthority::load(dir.path()).unwrap_err();
        assert!(
            error.to_string().contains("key does not match certificate"),
            "{error}"
        );
    }

    #[test]
    fn validity_must_end_after_it_starts() {
        let now = SystemTime::now();
        assert!(Validity::between(now, now).is_err());
        assert!(Validity::between(now - HOUR, now).is_ok());
        let validity = Validity::from_now(HOUR);
        assert!(validity.not_before < now && validity.not_after > now);
    }

    #[test]
    fn pem_lines_are_64_characters() {
        let pem = pem_encode("CERTIFICATE", &[7u8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(der.as_ref(), &[7u8; 100]);
    }
}
