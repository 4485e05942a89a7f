//! Certificate files for tests, made with the library `remora cert` uses.

use std::time::Duration;

use remora::tls::issue::{CertificateAuthority, Validity};
use remora::tls::{Identity, TrustDomain};

/// A CA for `domain` and an hour-long certificate for each of `services`, written as
/// `remora cert` writes them: `ca.pem`, `<service>.pem`, `<service>-key.pem`.
pub fn issue_mesh(domain: &str, services: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let domain = TrustDomain::parse(domain).unwrap();
    let hour = || Validity::from_now(Duration::from_secs(3600));
    let ca = CertificateAuthority::generate(&domain, hour()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.certificate_pem()).unwrap();
    for service in services {
        let identity = Identity::try_new(domain.clone(), service).unwrap();
        ca.issue(&identity, hour())
            .unwrap()
            .write(dir.path())
            .unwrap();
    }
    dir
}
