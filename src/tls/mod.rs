//! Floor 3, the mesh's trust: mutual TLS between sidecars, with SPIFFE identities.
//!
//! A service's identity on the mesh is a SPIFFE ID, `spiffe://<trust-domain>/<service>`
//! ([`Identity`]), carried as the one URI SAN of its certificate.

mod identity;

pub use identity::{Identity, IdentityError, TrustDomain, SPIFFE_SCHEME};
