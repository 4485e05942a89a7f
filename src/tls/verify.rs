//! How each side of a mesh connection checks the other: both chain to the current trust
//! bundle, a client also checks that the server is the service it meant to reach, and a
//! server that the client is of its own trust domain.
//!
//! Both verifiers read the trust bundle from [`Credentials`] at each handshake, so a
//! rotated bundle (a new CA added beside the old one) applies to the next handshake
//! without building new configs.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use super::certificate::CertificateInfo;
use super::credentials::Credentials;
use super::identity::{Identity, TrustDomain};

/// A server whose certificate chains to the bundle but names another identity (or none).
///
/// NOTE: `Debug` prints the message: rustls shows a custom certificate error with `{:?}`
/// in its own message, which is what the log and the caller read.
#[derive(thiserror::Error)]
pub enum PeerIdentityError {
    /// The server is another service.
    #[error("server identity {found} is not the expected {expected}")]
    Unexpected {
        /// What the certificate says.
        found: Identity,
        /// Whom the client meant to reach.
        expected: Identity,
    },
    /// The certificate has no usable SPIFFE identity.
    #[error("server certificate: {0}; expected {1}")]
    Missing(String, Identity),
}

impl std::fmt::Debug for PeerIdentityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A client whose certificate chains to the bundle but is not of the server's trust
/// domain (or names no usable identity). `Debug` prints the message, as
/// [`PeerIdentityError`]'s does.
#[derive(thiserror::Error)]
pub enum ClientIdentityError {
    /// The client is of another trust domain.
    #[error("client identity {found} is not of trust domain {expected}")]
    OtherTrustDomain {
        /// What the certificate says.
        found: Identity,
        /// The server's own trust domain.
        expected: TrustDomain,
    },
    /// The certificate has no usable SPIFFE identity.
    #[error("client certificate: {0}")]
    Missing(String),
    /// The server's own certificate has no identity, so no trust domain to admit.
    #[error("the server's own certificate has no SPIFFE identity: no client is admitted")]
    NoOwnIdentity,
}

impl std::fmt::Debug for ClientIdentityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A certificate error rustls reports as its own, carrying `error`.
fn refuse(error: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// Verifies a server as a mesh peer: its certificate chains to the trust bundle and its
/// SPIFFE identity is the expected one.
///
/// Why not the host-name check: a client reaches a service at whatever address discovery
/// gave it (an IP, a pod name), so the name it dials says nothing about who answers; the
/// SPIFFE ID in the certificate is what the CA vouched for, and it is what the client
/// checks instead. The `ServerName` handed to rustls is therefore ignored here (it still
/// travels as SNI when it is a DNS name).
///
/// Why not rustls's `WebPkiServerVerifier` as it is: its `verify_server_cert` always
/// matches the `ServerName` against the certificate's DNS and IP SANs, and an X.509-SVID
/// need carry none. This verifier runs the same chain verification through rustls's
/// public `verify_server_cert_signed_by_trust_anchor` (the function
/// `WebPkiServerVerifier` calls, with the `serverAuth` usage, the provider's signature
/// algorithms and the validity period), the same handshake-signature checks, and
/// replaces the name check with the identity check. NOTE: revocation lists are not
/// consulted (none are configured; short-lived certificates stand in for them).
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    credentials: Arc<Credentials>,
    expected: Identity,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// Accepts servers that chain to `credentials`' current bundle and present `expected`.
    pub fn new(credentials: Arc<Credentials>, expected: Identity) -> Self {
        let algorithms = credentials.provider().signature_verification_algorithms;
        Self {
            credentials,
            expected,
            algorithms,
        }
    }

    /// The identity servers must present.
    pub fn expected(&self) -> &Identity {
        &self.expected
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let material = self.credentials.current();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            material.roots(),
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let found = CertificateInfo::parse(end_entity)
            .and_then(|info| info.identity())
            .map_err(|problem| {
                refuse(PeerIdentityError::Missing(
                    problem.to_string(),
                    self.expected.clone(),
                ))
            })?;
        if found != self.expected {
            return Err(refuse(PeerIdentityError::Unexpected {
                found,
                expected: self.expected.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Requires every client to present a certificate that chains to the current trust
/// bundle (rustls's `WebPkiClientVerifier`, rebuilt with each bundle) and names one
/// SPIFFE identity of the server's own trust domain (that of the current certificate).
///
/// Why the trust domain here: a bundle may hold a CA that also signs for other domains
/// (a shared root, a federation step); a caller from outside the mesh never gets past
/// the handshake, whatever the request path admits. Which identities *of the domain*
/// may call is authorization, not authentication: it belongs to the request path, which
/// reads the peer's identity ([`super::peer_identity`]).
#[derive(Debug)]
pub struct TrustBundleClientVerifier {
    credentials: Arc<Credentials>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl TrustBundleClientVerifier {
    /// Accepts clients that chain to `credentials`' current bundle.
    pub fn new(credentials: Arc<Credentials>) -> Self {
        let algorithms = credentials.provider().signature_verification_algorithms;
        Self {
            credentials,
            algorithms,
        }
    }
}

impl ClientCertVerifier for TrustBundleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the bundle can change between handshakes and the hints would have to
    /// outlive it. The hints are optional; a client with one certificate sends it anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let material = self.credentials.current();
        let verified =
            material
                .client_verifier()
                .verify_client_cert(end_entity, intermediates, now)?;
        let expected = material
            .identity()
            .map(Identity::trust_domain)
            .ok_or_else(|| refuse(ClientIdentityError::NoOwnIdentity))?;
        let found = CertificateInfo::parse(end_entity)
            .and_then(|info| info.identity())
            .map_err(|problem| refuse(ClientIdentityError::Missing(problem.to_string())))?;
        if found.trust_domain() != expected {
            return Err(refuse(ClientIdentityError::OtherTrustDomain {
                found,
                expected: expected.clone(),
            }));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::string::Ia5String;
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};

    use super::*;
    use crate::tls::issue::Validity;
    use crate::tls::test_support::{hour, Pki};
    use crate::tls::RequiredIdentity;

    /// A client certificate `pki`'s CA signs with `uris` as its URI SANs: what `issue`
    /// refuses to make (another trust domain, no identity).
    fn signed(pki: &Pki, uris: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|uri| SanType::URI(Ia5String::try_from(uri.to_string()).unwrap()))
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params
            .signed_by(&key, pki.ca.issuer())
            .unwrap()
            .der()
            .clone()
    }

    fn refusal(verifier: &TrustBundleClientVerifier, leaf: &CertificateDer<'_>) -> String {
        verifier
            .verify_client_cert(leaf, &[], UnixTime::now())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_client_must_be_of_the_servers_trust_domain() {
        let pki = Pki::new();
        let files = pki.write("orders");
        let credentials = Credentials::load(files, RequiredIdentity::Any).unwrap();
        let verifier = TrustBundleClientVerifier::new(Arc::new(credentials));

        let payments = pki.issue("payments", Validity::from_now(hour()));
        verifier
            .verify_client_cert(&payments.chain()[0], &[], UnixTime::now())
            .unwrap();
        let same_domain = signed(&pki, &["spiffe://example.org/payments"]);
        verifier
            .verify_client_cert(&same_domain, &[], UnixTime::now())
            .unwrap();

        let other = signed(&pki, &["spiffe://other.org/payments"]);
        let error = refusal(&verifier, &other);
        assert!(
            error.contains("spiffe://other.org/payments is not of trust domain example.org"),
            "{error}"
        );
        let anonymous = signed(&pki, &[]);
        let error = refusal(&verifier, &anonymous);
        assert!(error.contains("no SPIFFE identity"), "{error}");
        let istio = signed(&pki, &["spiffe://example.org/ns/default/sa/payments"]);
        let error = refusal(&verifier, &istio);
        assert!(error.contains("more than one segment"), "{error}");
    }
}
