//! Mutual TLS between sidecars, through real sockets: a CA and service certificates made
//! with `remora::tls::issue` (and with `remora cert`), a tokio-rustls server and client on
//! loopback built from `tls::server_config` and `tls::client_config`, and what each side
//! accepts, refuses and sees when the certificate files change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use remora::tls::issue::{CertificateAuthority, IssuedCertificate, Validity};
use remora::tls::{
    client_config, detect, peer_identity, server_config, CertificateInfo, CredentialFiles,
    Credentials, Detected, Identity, PeerIdentityError, Problem, RequiredIdentity,
    SpiffeServerVerifier, TrustDomain,
};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, HandshakeKind, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{client, TlsAcceptor, TlsConnector};

const STEP: Duration = Duration::from_secs(5);

/// A trust domain's CA and the files of the certificates it issued, in a temporary
/// directory: `ca.pem`, `<service>.pem`, `<service>-key.pem`.
struct Mesh {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Mesh {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate(&domain(), Validity::from_now(hour())).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.certificate_pem()).unwrap();
        Self { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn issue(&self, service: &str, validity: Validity) -> IssuedCertificate {
        self.ca.issue(&identity(service), validity).unwrap()
    }

    /// Issues an hour-long certificate for `service` and writes it (replacing any).
    fn write(&self, service: &str) -> CredentialFiles {
        self.issue(service, Validity::from_now(hour()))
            .write(self.dir.path())
            .unwrap();
        CredentialFiles {
            certificate: self.path(&format!("{service}.pem")),
            private_key: self.path(&format!("{service}-key.pem")),
            trust_bundle: self.path("ca.pem"),
        }
    }

    fn credentials(&self, service: &str) -> Arc<Credentials> {
        let files = self.write(service);
        Arc::new(Credentials::load(files, RequiredIdentity::Exactly(identity(service))).unwrap())
    }
}

fn domain() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn identity(service: &str) -> Identity {
    Identity::try_new(domain(), service).unwrap()
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

/// A TLS server on loopback: it greets each client with the client's identity (or
/// `anonymous`) on one line, then echoes; it reports each refused handshake.
struct Server {
    addr: SocketAddr,
    refusals: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (refused, refusals) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let refused = refused.clone();
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(error) => {
                            let _ = refused.send(error.to_string());
                            return;
                        }
                    };
                    let peer = peer_identity(tls.get_ref().1)
                        .map_or_else(|| "anonymous".to_string(), |id| id.to_string());
                    if tls.write_all(format!("{peer}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut reader, mut writer) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        Self {
            addr,
            refusals,
            task,
        }
    }

    /// Why the server refused the last handshake.
    async fn refusal(&mut self) -> String {
        tokio::time::timeout(STEP, self.refusals.recv())
            .await
            .expect("the server refused no handshake")
            .unwrap()
    }
}

async fn connect(
    config: ClientConfig,
    addr: SocketAddr,
) -> std::io::Result<client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    // The name goes out as SNI; the server is verified by its SPIFFE identity instead.
    let name = ServerName::try_from("orders").unwrap();
    tokio::time::timeout(
        STEP,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake timed out")
}

async fn read_line(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = tokio::time::timeout(STEP, stream.read_u8())
            .await
            .expect("read timed out")?;
        if byte == b'\n' {
            return Ok(String::from_utf8(line).unwrap());
        }
        line.push(byte);
    }
}

/// Connects, checks the greeting and an echo; returns the open stream.
async fn talk(config: ClientConfig, addr: SocketAddr) -> client::TlsStream<TcpStream> {
    let mut tls = connect(config, addr).await.unwrap();
    let greeting = read_line(&mut tls).await.unwrap();
    assert!(greeting.starts_with("spiffe://"), "{greeting}");
    echo(&mut tls, "ping").await;
    tls
}

async fn echo(tls: &mut client::TlsStream<TcpStream>, text: &str) {
    tls.write_all(format!("{text}\n").as_bytes()).await.unwrap();
    assert_eq!(read_line(tls).await.unwrap(), text);
}

/// The serial number of the certificate the server presented.
fn server_serial(tls: &client::TlsStream<TcpStream>) -> String {
    let certificates = tls.get_ref().1.peer_certificates().unwrap();
    CertificateInfo::parse(&certificates[0])
        .unwrap()
        .serial_hex()
}

#[tokio::test]
async fn a_mutual_handshake_exchanges_bytes_and_each_side_sees_the_other() {
    let mesh = Mesh::new();
    let orders = mesh.credentials("orders");
    let payments = mesh.credentials("payments");
    let server = Server::start(server_config(&orders).unwrap()).await;

    let config = client_config(&payments, identity("orders")).unwrap();
    let mut tls = connect(config, server.addr).await.unwrap();
    assert_eq!(
        read_line(&mut tls).await.unwrap(),
        "spiffe://example.org/payments",
        "the server sees the client's identity"
    );
    let connection = tls.get_ref().1;
    assert_eq!(peer_identity(connection), Some(identity("orders")));
    assert_eq!(connection.alpn_protocol(), Some(&b"h2"[..]));
    echo(&mut tls, "hello over mutual TLS").await;
}

#[tokio::test]
async fn the_client_refuses_a_server_with_another_identity() {
    let mesh = Mesh::new();
    let server = Server::start(server_config(&mesh.credentials("payments")).unwrap()).await;

    let config = client_config(&mesh.credentials("checkout"), identity("orders")).unwrap();
    let error = connect(config, server.addr).await.unwrap_err();
    // A caller can match on the kind...
    let rustls_error = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) = rustls_error
    else {
        panic!("{error:?}");
    };
    assert!(matches!(
        other.0.downcast_ref::<PeerIdentityError>(),
        Some(PeerIdentityError::Unexpected { found, .. }) if found == &identity("payments")
    ));
    // ...and an operator can read the message.
    let error = error.to_string();
    assert!(
        error.contains(
            "server identity spiffe://example.org/payments is not the expected \
             spiffe://example.org/orders"
        ),
        "{error}"
    );
}

#[tokio::test]
async fn the_client_refuses_a_server_from_another_ca() {
    let mesh = Mesh::new();
    let elsewhere = Mesh::new();
    let server = Server::start(server_config(&elsewhere.credentials("orders")).unwrap()).await;

    let config = client_config(&mesh.credentials("payments"), identity("orders")).unwrap();
    let error = connect(config, server.addr).await.unwrap_err().to_string();
    assert!(error.contains("UnknownIssuer"), "{error}");
}

/// The client's handshake ends before the server has judged its certificate (TLS 1.3):
/// the refusal arrives as an alert on the first read.
async fn assert_refused(server: &mut Server, config: ClientConfig, expected: &str) {
    if let Ok(mut tls) = connect(config, server.addr).await {
        let read = read_line(&mut tls).await;
        assert!(read.is_err(), "the server answered: {read:?}");
    }
    let refusal = server.refusal().await;
    assert!(refusal.contains(expected), "{refusal}");
}

#[tokio::test]
async fn the_server_refuses_a_client_from_another_ca() {
    let mesh = Mesh::new();
    let elsewhere = Mesh::new();
    let mut server = Server::start(server_config(&mesh.credentials("orders")).unwrap()).await;

    // The stranger trusts the server's CA, but the server does not trust the stranger's.
    let files = elsewhere.write("payments");
    let bundle = elsewhere.path("both.pem");
    let both = mesh.ca.certificate_pem() + &elsewhere.ca.certificate_pem();
    std::fs::write(&bundle, both).unwrap();
    let stranger = Credentials::load(
        CredentialFiles {
            trust_bundle: bundle,
            ..files
        },
        RequiredIdentity::Any,
    )
    .unwrap();
    let config = client_config(&Arc::new(stranger), identity("orders")).unwrap();
    assert_refused(&mut server, config, "UnknownIssuer").await;
}

#[tokio::test]
async fn the_server_refuses_an_expired_client_certificate() {
    let mesh = Mesh::new();
    let mut server = Server::start(server_config(&mesh.credentials("orders")).unwrap()).await;

    // Credentials refuse to load an expired certificate, so the client presents it raw.
    let now = SystemTime::now();
    let expired = mesh.issue(
        "payments",
        Validity::between(now - 2 * hour(), now - hour()).unwrap(),
    );
    let verifier = SpiffeServerVerifier::new(mesh.credentials("checkout"), identity("orders"));
    let config = ClientConfig::builder_with_provider(remora::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(expired.chain().to_vec(), expired.key())
        .unwrap();
    assert_refused(&mut server, config, "certificate expired").await;
}

#[tokio::test]
async fn the_server_refuses_a_client_without_a_certificate() {
    let mesh = Mesh::new();
    let mut server = Server::start(server_config(&mesh.credentials("orders")).unwrap()).await;

    let verifier = SpiffeServerVerifier::new(mesh.credentials("checkout"), identity("orders"));
    let config = ClientConfig::builder_with_provider(remora::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    assert_refused(&mut server, config, "peer sent no certificates").await;
}

#[tokio::test]
async fn a_reload_changes_the_certificate_of_new_handshakes_and_spares_open_ones() {
    let mesh = Mesh::new();
    let orders = mesh.credentials("orders");
    let payments = mesh.credentials("payments");
    let server = Server::start(server_config(&orders).unwrap()).await;
    let config = client_config(&payments, identity("orders")).unwrap();

    let mut before = talk(config.clone(), server.addr).await;
    let old_serial = server_serial(&before);

    mesh.write("orders");
    let material = orders.reload().unwrap();
    let new_serial = material.certificate().serial_hex();
    assert_ne!(new_serial, old_serial);

    let after = talk(config, server.addr).await;
    assert_eq!(
        after.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full),
        "no session is resumed: every connection authenticates against the current material"
    );
    assert_eq!(
        server_serial(&after),
        new_serial,
        "a new handshake uses the new certificate"
    );
    echo(&mut before, "still here").await;
    assert_eq!(server_serial(&before), old_serial);
}

#[tokio::test]
async fn a_broken_file_on_reload_keeps_the_old_certificate_and_says_why() {
    let mesh = Mesh::new();
    let orders = mesh.credentials("orders");
    let payments = mesh.credentials("payments");
    let server = Server::start(server_config(&orders).unwrap()).await;
    let config = client_config(&payments, identity("orders")).unwrap();
    let serial = server_serial(&talk(config.clone(), server.addr).await);

    // Another service's key under the orders name: parses, but is not the certificate's.
    std::fs::copy(mesh.path("payments-key.pem"), mesh.path("orders-key.pem")).unwrap();
    let error = orders.reload().unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: key does not match certificate {}",
            mesh.path("orders-key.pem").display(),
            mesh.path("orders.pem").display()
        )
    );
    std::fs::write(mesh.path("orders.pem"), "").unwrap();
    let error = orders.reload().unwrap_err();
    assert!(
        matches!(error.problem, Problem::NoPem("certificate")),
        "{error}"
    );

    assert_eq!(server_serial(&talk(config, server.addr).await), serial);
}

#[tokio::test]
async fn the_watcher_swaps_in_rewritten_files_and_ignores_broken_ones() {
    let mesh = Mesh::new();
    let orders = mesh.credentials("orders");
    let payments = mesh.credentials("payments");
    let _watcher = remora::tls::watch(orders.clone()).unwrap();
    let server = Server::start(server_config(&orders).unwrap()).await;
    let config = client_config(&payments, identity("orders")).unwrap();
    let first = server_serial(&talk(config.clone(), server.addr).await);

    // A broken certificate written in place is refused; the old one keeps serving.
    std::fs::write(mesh.path("orders.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        server_serial(&talk(config.clone(), server.addr).await),
        first
    );

    // A new certificate renamed into place (what `remora cert issue` does) is taken.
    mesh.write("orders");
    let second = next_serial(&config, server.addr, &first).await;
    assert_eq!(second, orders.current().certificate().serial_hex());
}

/// Waits (up to 10 s) for the server to present a certificate other than `old`.
async fn next_serial(config: &ClientConfig, addr: SocketAddr, old: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = server_serial(&talk(config.clone(), addr).await);
        if seen != old {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher did not reload within 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kubernetes mounts a secret as `<name> -> ..data/<name>` and updates it by pointing a
/// new `..data` symlink at a new directory: no event names the files themselves.
#[cfg(unix)]
#[tokio::test]
async fn the_watcher_follows_a_kubernetes_style_symlink_swap() {
    use std::os::unix::fs::symlink;

    let mesh = Mesh::new();
    let payments = mesh.credentials("payments");
    let mount = tempfile::tempdir().unwrap();
    let version = |name: &str| {
        let dir = mount.path().join(name);
        mesh.issue("orders", Validity::from_now(hour()))
            .write(&dir)
            .unwrap();
        std::fs::copy(mesh.path("ca.pem"), dir.join("ca.pem")).unwrap();
    };
    version("..v1");
    symlink("..v1", mount.path().join("..data")).unwrap();
    for file in ["orders.pem", "orders-key.pem", "ca.pem"] {
        symlink(format!("..data/{file}"), mount.path().join(file)).unwrap();
    }
    let files = CredentialFiles {
        certificate: mount.path().join("orders.pem"),
        private_key: mount.path().join("orders-key.pem"),
        trust_bundle: mount.path().join("ca.pem"),
    };
    let orders = Arc::new(Credentials::load(files, RequiredIdentity::Any).unwrap());
    let _watcher = remora::tls::watch(orders.clone()).unwrap();
    let server = Server::start(server_config(&orders).unwrap()).await;
    let config = client_config(&payments, identity("orders")).unwrap();
    let first = server_serial(&talk(config.clone(), server.addr).await);

    version("..v2");
    symlink("..v2", mount.path().join("..data_tmp")).unwrap();
    std::fs::rename(mount.path().join("..data_tmp"), mount.path().join("..data")).unwrap();
    let second = next_serial(&config, server.addr, &first).await;
    assert_eq!(second, orders.current().certificate().serial_hex());
}

#[tokio::test]
async fn the_first_bytes_tell_a_client_hello_from_plaintext() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let mesh = Mesh::new();
    let config = client_config(&mesh.credentials("payments"), identity("orders")).unwrap();
    let tls_client = tokio::spawn(connect(config, addr));
    assert_eq!(detect(&first_bytes_of(&listener).await), Detected::Tls);
    tls_client.abort();

    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: orders\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        detect(&first_bytes_of(&listener).await),
        Detected::Plaintext
    );
}

async fn first_bytes_of(listener: &TcpListener) -> Vec<u8> {
    let (mut tcp, _) = listener.accept().await.unwrap();
    let mut first = vec![0; remora::tls::DETECT_LEN];
    tcp.read_exact(&mut first).await.unwrap();
    first
}

fn remora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(args)
        .output()
        .unwrap()
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn remora_cert_makes_a_ca_and_a_service_certificate_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let out = dir.path().join("orders");

    let made = remora(&[
        "cert",
        "ca",
        "--trust-domain",
        "example.org",
        "--out",
        arg(&ca_dir),
    ]);
    assert!(made.status.success(), "{made:?}");
    let again = remora(&[
        "cert",
        "ca",
        "--trust-domain",
        "example.org",
        "--out",
        arg(&ca_dir),
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );

    let issued = remora(&[
        "cert",
        "issue",
        "--ca",
        arg(&ca_dir),
        "--service",
        "orders",
        "--out",
        arg(&out),
    ]);
    assert!(issued.status.success(), "{issued:?}");
    assert!(
        String::from_utf8_lossy(&issued.stdout)
            .contains("spiffe://example.org/orders, valid for 1day"),
        "{issued:?}"
    );
    assert_private(&ca_dir.join("ca-key.pem"));
    assert_private(&out.join("orders-key.pem"));

    // The library reads what the command wrote: identity, a day's validity, the chain.
    let files = CredentialFiles {
        certificate: out.join("orders.pem"),
        private_key: out.join("orders-key.pem"),
        trust_bundle: ca_dir.join("ca.pem"),
    };
    let credentials =
        Credentials::load(files, RequiredIdentity::Exactly(identity("orders"))).unwrap();
    let validity = credentials
        .current()
        .certificate()
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        validity > Duration::from_secs(23 * 3600) && validity <= Duration::from_secs(24 * 3600)
    );

    openssl_reads(&ca_dir, &out);
}

/// `openssl` reads the files and sees the SANs, when it is installed; the library check
/// above runs either way.
fn openssl_reads(ca_dir: &Path, out: &Path) {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("NOTE: openssl is not installed; the files were checked with the library only");
        return;
    }
    let text = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-text",
            "-in",
            arg(&out.join("orders.pem")),
        ])
        .output()
        .unwrap();
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("URI:spiffe://example.org/orders"), "{text}");
    assert!(text.contains("DNS:orders"), "{text}");
    assert!(text.contains("prime256v1"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    let verified = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            arg(&ca_dir.join("ca.pem")),
            arg(&out.join("orders.pem")),
        ])
        .output()
        .unwrap();
    assert!(verified.status.success(), "{verified:?}");
    let key = Command::new("openssl")
        .args(["pkey", "-noout", "-in", arg(&out.join("orders-key.pem"))])
        .output()
        .unwrap();
    assert!(key.status.success(), "{key:?}");
}

#[cfg(unix)]
fn assert_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
}

#[cfg(not(unix))]
fn assert_private(_path: &Path) {}

#[test]
fn remora_cert_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = remora(&[
        "cert",
        "issue",
        "--ca",
        arg(dir.path()),
        "--service",
        "orders",
        "--out",
        arg(dir.path()),
    ]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: cannot read",
            dir.path().join("ca.pem").display()
        )),
        "{stderr}"
    );

    let made = remora(&[
        "cert",
        "ca",
        "--trust-domain",
        "example.org",
        "--out",
        arg(dir.path()),
    ]);
    assert!(made.status.success(), "{made:?}");
    let other_domain = remora(&[
        "cert",
        "issue",
        "--ca",
        arg(dir.path()),
        "--service",
        "orders",
        "--trust-domain",
        "other.org",
        "--out",
        arg(dir.path()),
    ]);
    assert!(!other_domain.status.success());
    assert!(
        String::from_utf8_lossy(&other_domain.stderr)
            .contains("the CA is for trust domain example.org, not other.org"),
        "{other_domain:?}"
    );
    let bad_name = remora(&[
        "cert",
        "issue",
        "--ca",
        arg(dir.path()),
        "--service",
        "Orders!",
        "--out",
        arg(dir.path()),
    ]);
    assert!(
        String::from_utf8_lossy(&bad_name.stderr).contains("invalid service name \"Orders!\""),
        "{bad_name:?}"
    );
}
