//! How a registry client reaches its server: TCP, and TLS over it when the registry has
//! a TLS config ([`RegistryTls`]). One [`Connector`] serves the Consul client (a hyper
//! client) and the etcd client over TLS (a tonic channel); it tries the server's
//! addresses in turn, starting one further at each connection, so a cluster member that
//! is down costs one failed attempt.
//!
//! A server that refuses remora's client certificate (or its absence) does so after a
//! TLS 1.3 handshake has completed on remora's side: its alert arrives on the first
//! read (or as a broken pipe on the next write), where the HTTP client reports only a
//! closed connection. The connector keeps the last such I/O error, and whether a server
//! asked for a client certificate that is not configured ([`Connector::last_failure`]),
//! so the registry can say why.
//!
//! The rustls config comes from the build floor (CA file or system roots, optional
//! client certificate, remora's crypto provider); this module only sets the ALPN
//! protocol its caller speaks and the name the server's certificate must carry.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// TLS toward a registry's servers.
#[derive(Debug, Clone)]
pub struct RegistryTls {
    /// The client config: roots, optional client certificate, provider (its ALPN is set
    /// by the registry client).
    pub config: rustls::ClientConfig,
    /// The name sent as SNI and checked against the certificate; default: each
    /// address's host.
    pub server_name: Option<String>,
}

/// One server address: where to connect and, with TLS, the name to check.
#[derive(Debug, Clone)]
pub(super) struct Target {
    host: String,
    port: u16,
    name: Option<ServerName<'static>>,
}

/// Connects to one of its targets, with TLS when configured.
#[derive(Clone)]
pub(super) struct Connector {
    targets: Arc<[Target]>,
    tls: Option<TlsConnector>,
    next: Arc<AtomicUsize>,
    /// The last read or write error of a TLS connection (an alert from the server).
    failure: Failure,
    /// Set when a server asked for a client certificate and none is configured.
    asked_for_certificate: Option<Arc<AskedForCertificate>>,
}

/// Where connections report their last I/O error.
type Failure = Arc<Mutex<Option<String>>>;

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("targets", &self.targets)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    /// A connector to `servers` (`host:port` each, IPv6 hosts in brackets), speaking
    /// `alpn` over TLS when `tls` is set.
    pub(super) fn new(
        servers: &[(String, u16)],
        tls: Option<&RegistryTls>,
        alpn: &[u8],
    ) -> Result<Self, String> {
        let mut targets = Vec::with_capacity(servers.len());
        for (host, port) in servers {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = match tls {
                None => None,
                Some(tls) => {
                    let name = tls.server_name.as_deref().unwrap_or(bare);
                    let name = ServerName::try_from(name.to_string())
                        .map_err(|_| format!("{name:?} is not a valid TLS server name"))?;
                    Some(name)
                }
            };
            targets.push(Target {
                host: bare.to_string(),
                port: *port,
                name,
            });
        }
        if targets.is_empty() {
            return Err("no server address".into());
        }
        let mut asked_for_certificate = None;
        let tls = tls.map(|tls| {
            let mut config = tls.config.clone();
            config.alpn_protocols = vec![alpn.to_vec()];
            if !config.client_auth_cert_resolver.has_certs() {
                let asked = Arc::new(AskedForCertificate {
                    inner: config.client_auth_cert_resolver.clone(),
                    asked: AtomicBool::new(false),
                });
                config.client_auth_cert_resolver = asked.clone();
                asked_for_certificate = Some(asked);
            }
            TlsConnector::from(Arc::new(config))
        });
        Ok(Self {
            targets: targets.into(),
            tls,
            next: Arc::new(AtomicUsize::new(0)),
            failure: Failure::default(),
            asked_for_certificate,
        })
    }

    /// The last I/O error of a TLS connection since the last call (a server's alert:
    /// "received fatal alert: CertificateRequired"), for the message of a call that
    /// failed with "connection closed".
    pub(super) fn last_failure(&self) -> Option<String> {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        let asked = self
            .asked_for_certificate
            .as_ref()
            .is_some_and(|asked| asked.asked.load(Ordering::Relaxed));
        Some(match asked {
            true => format!(
                "{failure}; the server asked for a client certificate and none is configured \
                 (set `cert` and `key` in the `tls` block)"
            ),
            false => failure,
        })
    }

    /// A connection to the first target that answers, starting one after the last
    /// start; the error names each target's failure when none does.
    pub(super) async fn connect(&self) -> io::Result<Stream> {
        let count = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..count {
            let target = &self.targets[(start + i) % count];
            match self.connect_to(target).await {
                Ok(stream) => return Ok(stream),
                Err(error) => failures.push(format!("{}:{}: {error}", target.host, target.port)),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            failures.join("; "),
        ))
    }

    async fn connect_to(&self, target: &Target) -> io::Result<Stream> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        let _ = tcp.set_nodelay(true);
        match (&self.tls, &target.name) {
            (Some(tls), Some(name)) => {
                let stream = tls.connect(name.clone(), tcp).await.map_err(|error| {
                    io::Error::new(error.kind(), format!("TLS handshake: {error}"))
                })?;
                Ok(Stream::Tls(Box::new(stream), self.failure.clone()))
            }
            _ => Ok(Stream::Plain(tcp)),
        }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Connects to the configured targets; the URI only names the pool.
    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

/// The client certificate resolver of a config without one, noting whether a server
/// asked for a certificate.
#[derive(Debug)]
struct AskedForCertificate {
    inner: Arc<dyn ResolvesClientCert>,
    asked: AtomicBool,
}

impl ResolvesClientCert for AskedForCertificate {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        self.inner.resolve(root_hint_subjects, sigschemes)
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}

/// A connection to a registry server, plain or TLS.
#[derive(Debug)]
pub(super) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the session is large), reporting its I/O errors.
    Tls(Box<TlsStream<TcpStream>>, Failure),
}

/// Keeps `result`'s error in `failure`.
fn noted<T>(result: Poll<io::Result<T>>, failure: &Failure) -> Poll<io::Result<T>> {
    if let Poll::Ready(Err(error)) = &result {
        *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }
    result
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls, failure) => noted(Pin::new(tls.as_mut()).poll_read(cx, buf), failure),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls, failure) => noted(Pin::new(tls.as_mut()).poll_write(cx, buf), failure),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls, failure) => noted(Pin::new(tls.as_mut()).poll_flush(cx), failure),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls, _) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls, failure) => noted(
                Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
                failure,
            ),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls, _) => tls.is_write_vectored(),
        }
    }
}

/// `error` and its sources, `: `-separated: hyper, tonic and etcd-client keep the
/// cause (an unknown issuer, a refused connection) below a generic message.
pub(super) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The host and port of a URL or `host:port` text, the port defaulting to `default`.
pub(super) fn host_port(authority: &http::uri::Authority, default: u16) -> (String, u16) {
    (
        authority.host().to_string(),
        authority.port_u16().unwrap_or(default),
    )
}
