//! Certificate files for this module's tests: a CA and service certificates in a
//! temporary directory.

use std::path::PathBuf;
use std::time::Duration;

use super::issue::{CertificateAuthority, IssuedCertificate, Validity};
use super::{CredentialFiles, Identity, TrustDomain};

/// A CA for `example.org` whose certificate is `dir/ca.pem`.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: CertificateAuthority,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let domain = TrustDomain::parse("example.org").unwrap();
        let ca = CertificateAuthority::generate(&domain, Validity::from_now(hour())).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.certificate_pem()).unwrap();
        Self { dir, ca }
    }

    pub(crate) fn identity(&self, service: &str) -> Identity {
        Identity::parse(&format!("spiffe://example.org/{service}")).unwrap()
    }

    pub(crate) fn issue(&self, service: &str, validity: Validity) -> IssuedCertificate {
        self.ca.issue(&self.identity(service), validity).unwrap()
    }

    /// Issues a day-long certificate for `service` and writes it beside the CA.
    pub(crate) fn write(&self, service: &str) -> CredentialFiles {
        self.issue(service, Validity::from_now(hour()))
            .write(self.dir.path())
            .unwrap();
        self.files(service)
    }

    pub(crate) fn files(&self, service: &str) -> CredentialFiles {
        CredentialFiles {
            certificate: self.path(&format!("{service}.pem")),
            private_key: self.path(&format!("{service}-key.pem")),
            trust_bundle: self.path("ca.pem"),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub(crate) fn hour() -> Duration {
    Duration::from_secs(3600)
}
