//! Floor 3, the mesh's trust: mutual TLS between sidecars, with SPIFFE identities.
//!
//! A sidecar holds one certificate, its key and a trust bundle, read from PEM files
//! ([`Credentials`]) and re-read when they change ([`watch`]). Its inbound listeners
//! present the certificate and require clients to present one that chains to the
//! bundle ([`server_config`]); its upstream connections present the same certificate
//! and accept only a server that chains to the bundle and carries the SPIFFE identity
//! of the service they meant to reach ([`client_config`], [`SpiffeServerVerifier`]).
//! The identity of a finished handshake's peer is [`peer_identity`]. [`detect`] tells
//! a ClientHello from plaintext, for a listener in [`InboundTls::Permissive`] mode.
//! [`issue`] makes a CA and service certificates (`remora cert`), and certificates for
//! hosts outside the mesh (IP and DNS names: a test etcd, Consul or collector).
//!
//! A reload swaps the material for new handshakes only: an established connection keeps
//! the keys it agreed on, since rustls asks the resolver and the verifiers for nothing
//! after the handshake.
//!
//! The crypto provider is rustls's `aws-lc-rs` provider, passed explicitly to every
//! config ([`provider`]); the process-wide default is never installed or read, so no
//! other crate's choice changes ours.

mod certificate;
mod client;
mod config;
mod credentials;
mod detect;
mod error;
mod identity;
pub mod issue;
mod key_permissions;
mod peer;
mod verify;
mod watch;

#[cfg(test)]
mod test_support;

use std::sync::Arc;

pub use certificate::CertificateInfo;
pub use client::ExternalTls;
pub use config::{client_config, server_config, tcp_server_config, ALPN_PROTOCOLS, TCP_ALPN};
pub use credentials::{CredentialFiles, Credentials, Material, RequiredIdentity};
pub use detect::{detect, Detected, InboundTls, DETECT_LEN};
pub use error::{CredentialsError, Problem};
pub use identity::{Identity, IdentityError, TrustDomain, SPIFFE_SCHEME};
pub use key_permissions::key_file_exposure;
pub use peer::peer_identity;
pub use verify::{
    ClientIdentityError, PeerIdentityError, SpiffeServerVerifier, TrustBundleClientVerifier,
};
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
