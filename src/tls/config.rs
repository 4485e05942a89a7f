//! The rustls configs of a mesh connection's two ends, built on one [`Credentials`].
//!
//! Both offer ALPN `h2` then `http/1.1`, the protocols remora serves and forwards (a TCP
//! passthrough connection offers [`TCP_ALPN`] alone, on both ends); both
//! use the credentials' crypto provider (never a process-wide default) and rustls's safe
//! default protocol versions (TLS 1.3 and 1.2).
//!
//! NOTE: session resumption is off on both ends. A resumed session skips the certificate
//! exchange, so it would keep a rotated-out certificate and an identity vouched for by
//! a CA since removed from the bundle alive for the session's lifetime; without it every
//! new connection authenticates against the current material. The cost is a full
//! handshake per connection, which pooled upstream connections amortize.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};

use super::credentials::Credentials;
use super::identity::Identity;
use super::verify::{SpiffeServerVerifier, TrustBundleClientVerifier};

/// The ALPN protocols offered, most preferred first.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The ALPN protocol of a TCP passthrough connection between two sidecars. Offered
/// alone on both ends, so an HTTP peer and a TCP peer never agree: the handshake fails
/// (`no_application_protocol`) instead of one side reading the other's bytes as its own.
pub const TCP_ALPN: &[u8] = b"remora-tcp";

/// `config` for a TCP passthrough listener: the same certificate, verifier and settings,
/// offering [`TCP_ALPN`] only.
pub fn tcp_server_config(config: &ServerConfig) -> ServerConfig {
    let mut config = config.clone();
    config.alpn_protocols = vec![TCP_ALPN.to_vec()];
    config
}

/// A server that presents the current certificate and requires a client certificate
/// chaining to the current trust bundle.
pub fn server_config(credentials: &Arc<Credentials>) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(credentials.provider().clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(TrustBundleClientVerifier::new(
            credentials.clone(),
        )))
        .with_cert_resolver(credentials.clone());
    config.alpn_protocols = alpn();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client that presents the current certificate and accepts only a server that chains
/// to the current trust bundle and carries `expected` (see [`SpiffeServerVerifier`] for
/// why the host name is not checked). One config per upstream service.
pub fn client_config(
    credentials: &Arc<Credentials>,
    expected: Identity,
) -> Result<ClientConfig, rustls::Error> {
    let verifier = SpiffeServerVerifier::new(credentials.clone(), expected);
    // `dangerous()` is rustls's only door to a custom verifier; this one verifies the
    // chain as the default one does and replaces only the host-name check.
    let mut config = ClientConfig::builder_with_provider(credentials.provider().clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(credentials.clone());
    config.alpn_protocols = alpn();
    config.resumption = Resumption::disabled();
    Ok(config)
}

fn alpn() -> Vec<Vec<u8>> {
    ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect()
}
