//! What remora reads from a certificate beyond what rustls checks: its serial number, its
//! validity and its SPIFFE identity.
//!
//! rustls (through webpki) verifies chains and signatures but exposes no certificate
//! fields; `x509-cert` decodes them. It runs on certificates remora loads from its own
//! files, and on a peer's certificate only after webpki has verified it.

use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

use super::error::Problem;
use super::identity::{Identity, SPIFFE_SCHEME};

/// The fields of one certificate that remora reports and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    serial: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
    /// Every URI SAN, in the certificate's order.
    uris: Vec<String>,
}

impl CertificateInfo {
    /// Decodes `der`.
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, Problem> {
        let certificate =
            Certificate::from_der(der).map_err(|e| Problem::MalformedCertificate(e.to_string()))?;
        let tbs = certificate.tbs_certificate();
        let validity = tbs.validity();
        let mut uris = Vec::new();
        let names = tbs
            .filter_extensions::<SubjectAltName>()
            .map(|found| found.map(|(_critical, names)| names))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Problem::MalformedCertificate(format!("subject alternative names: {e}"))
            })?;
        for name in names.iter().flat_map(|names| names.0.iter()) {
            if let GeneralName::UniformResourceIdentifier(uri) = name {
                uris.push(uri.to_string());
            }
        }
        Ok(Self {
            serial: tbs.serial_number().as_bytes().to_vec(),
            not_before: validity.not_before.to_system_time(),
            not_after: validity.not_after.to_system_time(),
            uris,
        })
    }

    /// The serial number as lowercase hex, the way `openssl x509 -serial` prints it.
    pub fn serial_hex(&self) -> String {
        self.serial.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The start of the validity period.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The end of the validity period.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The URI SANs (a workload's SPIFFE ID, a CA's trust domain ID).
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// Whether the certificate is valid at `now`; which bound it misses otherwise.
    pub fn check_validity(&self, now: SystemTime) -> Result<(), Problem> {
        if now < self.not_before {
            return Err(Problem::NotYetValid(self.not_before));
        }
        if now > self.not_after {
            return Err(Problem::Expired(self.not_after));
        }
        Ok(())
    }

    /// The one SPIFFE identity of the certificate. A URI SAN of another scheme is not
    /// counted; two `spiffe://` URIs are refused (an X.509-SVID has exactly one).
    pub fn identity(&self) -> Result<Identity, Problem> {
        let spiffe: Vec<&String> = self
            .uris
            .iter()
            .filter(|uri| {
                uri.get(..SPIFFE_SCHEME.len())
                    .is_some_and(|scheme| scheme.eq_ignore_ascii_case(SPIFFE_SCHEME))
            })
            .collect();
        match spiffe.as_slice() {
            [] => Err(Problem::NoIdentity),
            [one] => Identity::parse(one).map_err(Problem::InvalidIdentity),
            many => Err(Problem::ManyIdentities(many.len())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tls::issue::{CertificateAuthority, Validity};
    use crate::tls::TrustDomain;

    fn leaf(service: &str, validity: Validity) -> CertificateDer<'static> {
        let domain = TrustDomain::parse("example.org").unwrap();
        let ca =
            CertificateAuthority::generate(&domain, Validity::from_now(Duration::from_secs(3600)))
                .unwrap();
        let identity = Identity::try_new(domain, service).unwrap();
        let issued = ca.issue(&identity, validity).unwrap();
        issued.chain()[0].clone()
    }

    #[test]
    fn reads_serial_validity_and_identity() {
        let info = CertificateInfo::parse(&leaf(
            "orders",
            Validity::from_now(Duration::from_secs(3600)),
        ))
        .unwrap();
        assert_eq!(
            info.identity().unwrap().to_string(),
            "spiffe://example.org/orders"
        );
        assert_eq!(info.uris(), ["spiffe://example.org/orders"]);
        assert!(info.serial_hex().len() >= 16, "{}", info.serial_hex());
        let now = SystemTime::now();
        assert!(info.not_before() <= now && now < info.not_after());
        assert!(info.check_validity(now).is_ok());
        let later = now + Duration::from_secs(7200);
        assert!(matches!(
            info.check_validity(later),
            Err(Problem::Expired(_))
        ));
        let earlier = now - Duration::from_secs(7200);
        assert!(matches!(
            info.check_validity(earlier),
            Err(Problem::NotYetValid(_))
        ));
    }

    #[test]
    fn counts_spiffe_uris_only() {
        let mut info =
            CertificateInfo::parse(&leaf("orders", Validity::from_now(Duration::from_secs(60))))
                .unwrap();
        info.uris = vec!["https://example.org/".into()];
        assert!(matches!(info.identity(), Err(Problem::NoIdentity)));
        info.uris = vec![
            "spiffe://example.org/a".into(),
            "https://example.org/".into(),
            "SPIFFE://example.org/b".into(),
        ];
        assert!(matches!(info.identity(), Err(Problem::ManyIdentities(2))));
        info.uris = vec!["spiffe://example.org/ns/x/sa/y".into()];
        assert!(matches!(info.identity(), Err(Problem::InvalidIdentity(_))));
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert!(matches!(
            CertificateInfo::parse(&junk),
            Err(Problem::MalformedCertificate(_))
        ));
    }
}
