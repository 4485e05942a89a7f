//! Why certificate material was refused: the file, and what is wrong with it.
//!
//! A refused reload keeps the previous material; the message is what an operator reads
//! in the log, so it names the file and says what to fix ("certificate expired at …",
//! "key does not match certificate …", "no SPIFFE identity").

use std::path::PathBuf;
use std::time::SystemTime;

use super::identity::{Identity, IdentityError};

/// Certificate material that could not be loaded, with the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct CredentialsError {
    /// The certificate, key or trust bundle file (a directory for [`Problem::Unwatchable`]).
    pub file: PathBuf,
    /// What is wrong with it.
    pub problem: Problem,
}

impl CredentialsError {
    pub(super) fn new(file: impl Into<PathBuf>, problem: Problem) -> Self {
        Self {
            file: file.into(),
            problem,
        }
    }
}

/// What is wrong with a file of certificate material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Unreadable(#[source] std::io::Error),
    /// The file holds no PEM block of the kind needed.
    #[error("no {0} in PEM form")]
    NoPem(&'static str),
    /// A PEM block could not be decoded.
    #[error("malformed PEM: {0}")]
    MalformedPem(String),
    /// A certificate's DER could not be decoded.
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    /// The private key is of a kind the crypto provider cannot use.
    #[error("unusable private key: {0}")]
    UnusableKey(String),
    /// The private key is not the certificate's.
    #[error("key does not match certificate {}", .0.display())]
    KeyMismatch(PathBuf),
    /// The certificate's validity ended.
    #[error("certificate expired at {}", humantime::format_rfc3339_seconds(*.0))]
    Expired(SystemTime),
    /// The certificate's validity has not started.
    #[error("certificate is not valid before {}", humantime::format_rfc3339_seconds(*.0))]
    NotYetValid(SystemTime),
    /// The certificate carries no `spiffe://` URI SAN.
    #[error("no SPIFFE identity: the certificate has no `spiffe://` URI SAN")]
    NoIdentity,
    /// The certificate carries more than one `spiffe://` URI SAN.
    #[error("{0} SPIFFE identities: a certificate carries exactly one `spiffe://` URI SAN")]
    ManyIdentities(usize),
    /// The certificate's `spiffe://` URI SAN is not a remora identity.
    #[error("{0}")]
    InvalidIdentity(IdentityError),
    /// The certificate is another service's.
    #[error("identity {found} is not the expected {expected}")]
    UnexpectedIdentity {
        /// What the certificate says.
        found: Identity,
        /// What the credentials were loaded for.
        expected: Identity,
    },
    /// A trust bundle certificate cannot be a trust anchor.
    #[error("not a usable CA certificate: {0}")]
    BadTrustAnchor(String),
    /// The certificate does not verify against the trust bundle.
    #[error("does not chain to the trust bundle {}: {reason}", bundle.display())]
    Untrusted {
        /// The trust bundle file.
        bundle: PathBuf,
        /// What verification said.
        reason: String,
    },
    /// The system offers no root certificates to verify a server with.
    #[error("no system root certificates ({0}): name a CA file with `ca`")]
    NoSystemRoots(String),
    /// The files' directory cannot be watched for changes.
    #[error("cannot watch for changes: {0}")]
    Unwatchable(String),
}
