//! TLS for the scenario tests: a CA that issues certificate files ([`Pki`]), and a TLS
//! front ([`TlsFront`]) that terminates TLS on loopback and relays the bytes to a
//! plaintext upstream (a recording server, the gRPC echo, a WebSocket echo), recording
//! each handshake: the ALPN agreed and the client's identity.
//!
//! A front can also admit plaintext beside TLS, told apart by the first bytes, and relay
//! each kind to its own upstream; that is how a test sees which connections were TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use remora::tls::issue::{CertificateAuthority, Validity};
use remora::tls::{detect, peer_identity, Detected, Identity, TrustDomain, DETECT_LEN};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// The trust domain of the tests' mesh.
pub const DOMAIN: &str = "example.org";

/// A CA of [`DOMAIN`] and the certificate files it issued, in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

/// Where one service's certificate, its key and the CA bundle are.
#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

impl Files {
    /// The top-level `tls` section of a sidecar presenting this certificate.
    pub fn yaml(&self) -> String {
        format!(
            "{{ cert: {}, key: {}, bundle: {} }}",
            self.cert.display(),
            self.key.display(),
            self.bundle.display()
        )
    }

    /// A server config presenting this certificate, requiring none of clients.
    pub fn server_config(&self) -> ServerConfig {
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let mut config = ServerConfig::builder_with_provider(remora::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }

    /// A mesh server config (`tls::server_config`): presents this certificate and
    /// requires a client certificate chaining to the bundle.
    pub fn mesh_server_config(&self) -> ServerConfig {
        let files = remora::tls::CredentialFiles {
            certificate: self.cert.clone(),
            private_key: self.key.clone(),
            trust_bundle: self.bundle.clone(),
        };
        let credentials =
            remora::tls::Credentials::load(files, remora::tls::RequiredIdentity::Any).unwrap();
        remora::tls::server_config(&Arc::new(credentials)).unwrap()
    }
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let domain = TrustDomain::parse(DOMAIN).unwrap();
        let ca = CertificateAuthority::generate(&domain, Validity::from_now(hour())).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.certificate_pem()).unwrap();
        Self { dir, ca }
    }

    /// Issues and writes an hour-long certificate for `service` of [`DOMAIN`] (its DNS
    /// SAN is the service name too).
    pub fn issue(&self, service: &str) -> Files {
        let identity = Identity::parse(&format!("spiffe://{DOMAIN}/{service}")).unwrap();
        self.ca
            .issue(&identity, Validity::from_now(hour()))
            .unwrap()
            .write(self.dir.path())
            .unwrap();
        Files {
            cert: self.dir.path().join(format!("{service}.pem")),
            key: self.dir.path().join(format!("{service}-key.pem")),
            bundle: self.bundle(),
        }
    }

    /// The CA certificate file.
    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A file in the directory, for tests that write their own.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

/// One connection the front accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A TLS connection: the ALPN protocol agreed and the client's SPIFFE ID, if any.
    Tls {
        alpn: Option<String>,
        peer: Option<String>,
    },
    /// A plaintext connection (only with [`TlsFront::permissive`]).
    Plaintext,
}

/// A TLS terminator on loopback in front of plaintext upstreams.
pub struct TlsFront {
    pub addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Accepted>>>,
    refused: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFront {
    /// Terminates TLS with `config` and relays to `upstream`; plaintext is refused.
    pub async fn start(config: ServerConfig, upstream: SocketAddr) -> Self {
        Self::listen(config, upstream, None).await
    }

    /// Terminates TLS with `config` and relays to `tls_upstream`; relays plaintext to
    /// `plain_upstream`.
    pub async fn permissive(
        config: ServerConfig,
        tls_upstream: SocketAddr,
        plain_upstream: SocketAddr,
    ) -> Self {
        Self::listen(config, tls_upstream, Some(plain_upstream)).await
    }

    async fn listen(config: ServerConfig, upstream: SocketAddr, plain: Option<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (seen, failed) = (accepted.clone(), refused.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (seen, failed) = (seen.clone(), failed.clone());
                tokio::spawn(async move {
                    if is_plaintext(&tcp).await {
                        let Some(plain) = plain else {
                            failed.lock().unwrap().push("plaintext".into());
                            return;
                        };
                        seen.lock().unwrap().push(Accepted::Plaintext);
                        relay(tcp, plain).await;
                        return;
                    }
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(error) => {
                            failed.lock().unwrap().push(error.to_string());
                            return;
                        }
                    };
                    let connection = tls.get_ref().1;
                    let alpn = connection
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned());
                    let peer = peer_identity(connection).map(|id| id.to_string());
                    seen.lock().unwrap().push(Accepted::Tls { alpn, peer });
                    relay(tls, upstream).await;
                });
            }
        });
        Self {
            addr,
            accepted,
            refused,
            task,
        }
    }

    /// Every connection accepted so far, in order.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.accepted.lock().unwrap().clone()
    }

    /// Every handshake refused so far (rustls's words).
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap().clone()
    }
}

/// Whether the connection opens with anything but a TLS ClientHello.
async fn is_plaintext(tcp: &TcpStream) -> bool {
    let mut first = [0u8; DETECT_LEN];
    loop {
        let Ok(read) = tcp.peek(&mut first).await else {
            return true;
        };
        match detect(&first[..read]) {
            Detected::Tls => return false,
            Detected::Plaintext => return true,
            Detected::NeedMore if read == 0 => return true,
            Detected::NeedMore => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn relay<S>(mut client: S, upstream: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
