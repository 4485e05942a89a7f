//! Certificates for a host outside the mesh (an etcd or Consul server, a trace
//! collector, in tests and small deployments): DNS names and IP addresses as SANs, no
//! SPIFFE identity, the extended key usages `serverAuth` and `clientAuth` (etcd presents
//! its server certificate to its peers too).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::SanType;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::{pem_encode, write_file, CertificateAuthority, IssueError, Validity};

impl CertificateAuthority {
    /// A certificate for a host reached as any of `names` (each an IP address or a DNS
    /// name; the first is its common name), with a new ECDSA P-256 key.
    pub fn issue_host(
        &self,
        names: &[&str],
        validity: Validity,
    ) -> Result<HostCertificate, IssueError> {
        let Some(first) = names.first() else {
            return Err(IssueError::Validity(
                "a host certificate needs at least one name".to_string(),
            ));
        };
        let sans = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ia5String::try_from(*name).map(SanType::DnsName),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (chain, key) = self.sign_leaf(first, sans, validity)?;
        Ok(HostCertificate { chain, key })
    }
}

/// A host certificate just issued, with its key.
pub struct HostCertificate {
    /// The leaf, then the issuing CA when it is an intermediate.
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for HostCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCertificate").finish_non_exhaustive()
    }
}

impl HostCertificate {
    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
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

    /// Writes `dir/<stem>.pem` (the chain) and `dir/<stem>-key.pem` (mode 0600),
    /// creating `dir`; the key first, as [`IssuedCertificate::write`](super::IssuedCertificate::write) does.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), IssueError> {
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}-key.pem"));
        std::fs::create_dir_all(dir).map_err(|source| IssueError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        write_file(&key_path, self.key_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, self.chain_pem().as_bytes(), 0o644)?;
        Ok((cert_path, key_path))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::pki_types::{ServerName, UnixTime};

    use super::*;
    use crate::tls::TrustDomain;

    #[test]
    fn a_host_certificate_verifies_for_its_ip_and_dns_names_only() {
        let domain = TrustDomain::parse("test.local").unwrap();
        let ca =
            CertificateAuthority::generate(&domain, Validity::from_now(Duration::from_secs(600)))
                .unwrap();
        let host = ca
            .issue_host(
                &["127.0.0.1", "localhost"],
                Validity::from_now(Duration::from_secs(600)),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.certificate().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .unwrap();
        let verify = |name: &'static str| {
            verifier.verify_server_cert(
                &host.chain()[0],
                &host.chain()[1..],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        use rustls::client::danger::ServerCertVerifier as _;
        assert!(verify("127.0.0.1").is_ok());
        assert!(verify("localhost").is_ok());
        assert!(verify("10.0.0.1").is_err());
        assert!(verify("example.org").is_err());
        assert!(ca
            .issue_host(&[], Validity::from_now(Duration::from_secs(60)))
            .is_err());
    }
}
