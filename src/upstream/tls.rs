//! TLS origination toward a service's endpoints: which connections are TLS, with which
//! client config, and why a handshake failed.
//!
//! - [`UpstreamTls`]: one client config split by pool (ALPN `http/1.1` for the HTTP/1
//!   pool, `h2` for the HTTP/2 pool; `remora-tcp` for TCP passthrough, which is never
//!   pooled) and the server name to send, with an id that keys
//!   the connection pools, so connections made with different TLS settings (or none) to
//!   one address are never shared;
//! - [`EndpointTls`]: a service's choice per endpoint: always plaintext, always TLS, or
//!   mutual TLS only to endpoints whose registry entry advertises it (`remora_mtls`);
//! - [`TlsError`]: a failed handshake, said the way an operator can act on it.
//!
//! The plaintext path pays one `match` per request and nothing else.

use std::io;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::balance::Endpoint;

/// The next [`UpstreamTls`] id; ids are never reused within a process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How connections to one service's endpoints speak TLS.
///
/// Invariant: the HTTP/1 config offers ALPN `http/1.1` only and the HTTP/2 config `h2`
/// only, so a connection never agrees on a protocol its pool does not speak (a server
/// that answers no ALPN at all is taken at its word: the service's `protocol` says what
/// it speaks).
#[derive(Debug)]
pub struct UpstreamTls {
    /// Unique in the process: part of the pool key.
    id: NonZeroU64,
    /// ALPN `http/1.1` only.
    http1: Arc<ClientConfig>,
    /// ALPN `h2` only.
    http2: Arc<ClientConfig>,
    /// ALPN `remora-tcp` only ([`crate::tls::TCP_ALPN`]): a TCP passthrough connection.
    tcp: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl UpstreamTls {
    /// TLS with `config` (its ALPN list is replaced per pool), sending `server_name` as
    /// SNI (an IP address is not sent, only checked against the certificate).
    pub fn new(config: ClientConfig, server_name: ServerName<'static>) -> Self {
        let with_alpn = |protocol: &[u8]| {
            let mut config = config.clone();
            config.alpn_protocols = vec![protocol.to_vec()];
            Arc::new(config)
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Self {
            id: NonZeroU64::new(id).expect("ids start at 1 and a u64 does not wrap"),
            http1: with_alpn(b"http/1.1"),
            http2: with_alpn(b"h2"),
            tcp: with_alpn(crate::tls::TCP_ALPN),
            server_name,
        }
    }

    /// Its pool-key id.
    pub fn id(&self) -> NonZeroU64 {
        self.id
    }

    /// The name sent as SNI and checked (outside the mesh) against the certificate.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// The ALPN protocols the config of the HTTP/2 pool (`true`) or HTTP/1 pool offers.
    pub fn alpn(&self, http2: bool) -> &[Vec<u8>] {
        let config = if http2 { &self.http2 } else { &self.http1 };
        &config.alpn_protocols
    }

    /// The handshake over `stream`, for the HTTP/2 pool (`true`) or the HTTP/1 pool,
    /// bounded by `timeout`.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        http2: bool,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, TlsError> {
        let config = if http2 { &self.http2 } else { &self.http1 };
        self.handshake_with(config, stream, timeout).await
    }

    /// The handshake of a TCP passthrough connection over `stream` (ALPN `remora-tcp`),
    /// bounded by `timeout`.
    pub(super) async fn handshake_tcp(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, TlsError> {
        self.handshake_with(&self.tcp, stream, timeout).await
    }

    async fn handshake_with(
        &self,
        config: &Arc<ClientConfig>,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, TlsError> {
        let handshake =
            TlsConnector::from(config.clone()).connect(self.server_name.clone(), stream);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(TlsError::Handshake(error)),
            Err(_) => Err(TlsError::TimedOut(timeout)),
        }
    }
}

/// Why a TLS connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The handshake did not complete in time.
    #[error("TLS handshake timed out after {0:?}")]
    TimedOut(Duration),
    /// The handshake failed: the server was refused, or it refused us.
    #[error("TLS handshake: {}", describe(.0))]
    Handshake(io::Error),
}

/// What an operator needs from a handshake failure: the identity check's own words, and
/// "unknown CA" rather than rustls's variant names.
fn describe(error: &io::Error) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return error.to_string();
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other.0.to_string(),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "unknown CA: the server's certificate does not chain to a trusted CA".to_string()
        }
        rustls::Error::AlertReceived(alert) => {
            format!("the server refused the handshake (alert: {alert:?})")
        }
        other => other.to_string(),
    }
}

/// Which of a service's endpoints are reached over TLS, and how.
#[derive(Debug, Clone, Default)]
pub enum EndpointTls {
    /// Every endpoint in plaintext; registry advertisements are not looked at.
    #[default]
    Plaintext,
    /// Every endpoint over this TLS (the service's `tls` block).
    Always(Arc<UpstreamTls>),
    /// Plaintext, except endpoints whose registry entry advertises mutual TLS.
    Advertised(Arc<Advertised>),
}

impl EndpointTls {
    /// The TLS to reach `endpoint` with; `None`: plaintext.
    #[inline]
    pub fn of(&self, endpoint: &Endpoint) -> Option<&Arc<UpstreamTls>> {
        match self {
            Self::Plaintext => None,
            Self::Always(tls) => Some(tls),
            Self::Advertised(advertised) => advertised.upgrade(endpoint),
        }
    }
}

/// Mutual TLS to the endpoints that advertise it (`remora_mtls`), expecting the identity
/// of the service as the caller names it.
///
/// A registry is not a certificate authority: what an entry claims only says that the
/// endpoint speaks mutual TLS, never whom to expect there.
#[derive(Debug)]
pub struct Advertised {
    /// The caller's name of the service, for logs.
    service: Arc<str>,
    /// The mutual-TLS config and the identity it expects; `None` when the sidecar has no
    /// certificate of its own (such endpoints stay plaintext).
    upgrade: Option<(Arc<UpstreamTls>, String)>,
    /// Whether a claim other than the expected identity was logged.
    warned_claim: AtomicBool,
    /// Whether the missing own certificate was logged.
    warned_plaintext: AtomicBool,
}

impl Advertised {
    /// Upgrades to `tls`, whose verifier expects `expected`.
    pub fn upgrade_to(service: Arc<str>, tls: Arc<UpstreamTls>, expected: String) -> Self {
        Self {
            service,
            upgrade: Some((tls, expected)),
            warned_claim: AtomicBool::new(false),
            warned_plaintext: AtomicBool::new(false),
        }
    }

    /// Cannot upgrade (no certificate of its own): stays plaintext and says so once.
    pub fn plaintext(service: Arc<str>) -> Self {
        Self {
            service,
            upgrade: None,
            warned_claim: AtomicBool::new(false),
            warned_plaintext: AtomicBool::new(false),
        }
    }

    fn upgrade(&self, endpoint: &Endpoint) -> Option<&Arc<UpstreamTls>> {
        let claimed = endpoint.advertised_mtls.as_deref()?;
        let Some((tls, expected)) = &self.upgrade else {
            if !self.warned_plaintext.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    service = %self.service,
                    endpoint = %endpoint.addr,
                    advertised = claimed,
                    "the endpoint advertises mutual TLS, but this sidecar has no certificate \
                     (top-level `tls`): calling it in plaintext"
                );
            }
            return None;
        };
        if claimed != expected && !self.warned_claim.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                service = %self.service,
                endpoint = %endpoint.addr,
                advertised = claimed,
                expected = %expected,
                "the endpoint's registry entry advertises another identity than the expected \
                 one; the server must present the expected one"
            );
        }
        Some(tls)
    }
}
