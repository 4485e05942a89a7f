//! Who is on the other end of a finished handshake, for the access log and spans.

use rustls::CommonState;

use super::certificate::CertificateInfo;
use super::identity::Identity;

/// The SPIFFE identity of the peer's certificate, once the handshake is done. `None` when
/// the peer presented no certificate (a plaintext or server-only TLS peer) or one without
/// exactly one remora identity; the verifiers have already refused such a peer wherever
/// an identity is required.
pub fn peer_identity(connection: &CommonState) -> Option<Identity> {
    let leaf = connection.peer_certificates()?.first()?;
    CertificateInfo::parse(leaf).ok()?.identity().ok()
}
