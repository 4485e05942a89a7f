//! Floor 3, the mesh's trust: mutual TLS between sidecars, with SPIFFE identities.
//!
//! A service's identity on the mesh is a SPIFFE ID, `spiffe://<trust-domain>/<service>`
//! ([`Identity`]), carried as the one URI SAN of its certificate ([`CertificateInfo`]
//! reads it back, with the serial number and validity). A sidecar holds one certificate,
//! its key and a trust bundle, read from PEM files ([`Credentials`]) and re-read when
//! they change ([`watch`]); they resolve the certificate of every new handshake, as a
//! server and as a client. [`issue`] makes a CA and service certificates
//! (`remora cert`).
//!
//! A reload swaps the material for new handshakes only: an established connection keeps
//! the keys it agreed on, since rustls asks the resolver for nothing after the
//! handshake.
//!
//! The crypto provider is rustls's `aws-lc-rs` provider, passed explicitly wherever one
//! is needed ([`provider`]); the process-wide default is never installed or read, so no
//! other crate's choice changes ours.

mod certificate;
mod credentials;
mod error;
mod identity;
pub mod issue;
mod key_permissions;
mod watch;

#[cfg(test)]
mod test_support;

use std::sync::Arc;

pub use certificate::CertificateInfo;
pub use credentials::{CredentialFiles, Credentials, Material, RequiredIdentity};
pub use error::{CredentialsError, Problem};
pub use identity::{Identity, IdentityError, TrustDomain, SPIFFE_SCHEME};
pub use key_permissions::key_file_exposure;
pub use watch::{watch, CredentialsWatcher};

/// The crypto provider of every TLS config remora builds: rustls's `aws-lc-rs` provider.
///
/// Why not `ring`: rustls 0.23.48 deprecates its ring provider, which has no
/// post-quantum key exchange; aws-lc-rs prefers the hybrid X25519MLKEM768 (and keeps
/// P-384, X25519 and P-256 for peers without it), so traffic recorded today is not
/// readable by a future quantum computer. aws-lc-sys builds with the C compiler alone
/// on Linux (no cmake, no nasm, bindings pregenerated), as ring does.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
