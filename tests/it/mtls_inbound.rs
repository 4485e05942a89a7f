//! Mutual TLS on the inbound listener, through real sockets: a sidecar `orders` of trust
//! domain `example.org` in front of a plaintext app, and tokio-rustls, tonic, curl and
//! openssl clients with certificates of the domain, of another CA, of another domain,
//! expired, or none. What the callers get, what the app sees (and never sees), the
//! authorization answers, the metrics, the access log and spans, and a certificate
//! rotation under load.

use std::collections::HashSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use remora::echo::echo_client::EchoClient;
use remora::tls::issue::{CertificateAuthority, IssuedCertificate, Validity};
use remora::tls::{CertificateInfo, Identity};
use remora::trace::TracingConfig;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::{self, echo, metric, otlp_receiver};

const WAIT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn hour() -> Validity {
    Validity::from_now(Duration::from_secs(3600))
}

/// A root CA whose certificate names no trust domain, so that it issues for any (as a
/// root shared by several meshes would), and the files it issued, in a temporary
/// directory: `ca.pem`, `<service>.pem`, `<service>-key.pem`.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        // Each CA its own name: verifiers look an issuer up by name.
        let tag = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("shared root {tag}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key).unwrap();
        let ca_dir = dir.path().join("ca");
        std::fs::create_dir(&ca_dir).unwrap();
        std::fs::write(ca_dir.join("ca.pem"), certificate.pem()).unwrap();
        std::fs::write(ca_dir.join("ca-key.pem"), key.serialize_pem()).unwrap();
        let ca = CertificateAuthority::load(&ca_dir).unwrap();
        assert!(ca.trust_domain().is_none());
        std::fs::write(dir.path().join("ca.pem"), ca.certificate_pem()).unwrap();
        Self { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn issue(&self, id: &str, validity: Validity) -> IssuedCertificate {
        self.ca
            .issue(&Identity::parse(id).unwrap(), validity)
            .unwrap()
    }

    /// Issues an hour-long certificate for `id` and writes it (replacing any).
    fn write(&self, id: &str) -> IssuedCertificate {
        let issued = self.issue(id, hour());
        issued.write(self.dir.path()).unwrap();
        issued
    }

    /// A sidecar `orders` of this CA in front of `app`, with `inbound` lines (indented
    /// by 2) added to its `inbound` section.
    fn sidecar_yaml(&self, app: SocketAddr, inbound: &str) -> String {
        self.write("spiffe://example.org/orders");
        format!(
            "admin: {{ listen: 127.0.0.1:0 }}\n\
             tls:\n  cert: {}\n  key: {}\n  bundle: {}\n\
             inbound:\n  listen: 127.0.0.1:0\n  app: {app}\n{inbound}",
            self.path("orders.pem").display(),
            self.path("orders-key.pem").display(),
            self.path("ca.pem").display(),
        )
    }
}

/// A client that trusts `pki`'s CA, presents `certificate` (if any) and offers `alpn`.
/// The sidecar's certificate carries `orders` as a DNS name, so rustls's ordinary
/// verifier checks it.
fn client(pki: &Pki, certificate: Option<&IssuedCertificate>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.certificate().clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(remora::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match certificate {
        Some(issued) => builder
            .with_client_auth_cert(issued.chain().to_vec(), issued.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

/// What a caller got back over TLS.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    version: http::Version,
    error_header: Option<String>,
    /// The serial number of the certificate the sidecar presented.
    serial: String,
}

async fn tls_stream(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("orders").unwrap();
    TlsConnector::from(config.clone()).connect(name, tcp).await
}

/// GET `path` on a new mutual-TLS connection, over h2 when ALPN says so, else HTTP/1.1.
async fn get_tls(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    path: &str,
) -> Result<Answer, BoxError> {
    let exchange = async {
        let tls = tls_stream(addr, config).await?;
        let serial =
            CertificateInfo::parse(&tls.get_ref().1.peer_certificates().unwrap()[0])?.serial_hex();
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let io = TokioIo::new(tls);
        let response = if h2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            let request =
                http::Request::get(format!("https://orders{path}")).body(Empty::<Bytes>::new())?;
            sender.send_request(request).await?
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(connection);
            let request = http::Request::get(path)
                .header("host", "orders")
                .body(Empty::<Bytes>::new())?;
            sender.send_request(request).await?
        };
        let status = response.status().as_u16();
        let version = response.version();
        let error_header = response
            .headers()
            .get("x-remora-error")
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, BoxError>(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            version,
            error_header,
            serial,
        })
    };
    tokio::time::timeout(WAIT, exchange).await?
}

fn handshake_failures() -> &'static str {
    "remora_tls_handshake_failures_total{listener=\"inbound\"}"
}

#[tokio::test]
async fn a_strict_inbound_serves_mtls_callers_over_http1_and_h2_and_the_app_sees_plaintext() {
    let pki = Pki::new();
    let (app, seen) = support::recording("app").await;
    let sidecar = support::sidecar(&pki.sidecar_yaml(app, "  tls: strict\n")).await;
    let inbound = sidecar.addrs().inbound.unwrap();
    let frontend = pki.issue("spiffe://example.org/frontend", hour());

    let offers: [(&[u8], http::Version); 2] = [
        (b"http/1.1", http::Version::HTTP_11),
        (b"h2", http::Version::HTTP_2),
    ];
    for (alpn, version) in offers {
        let config = client(&pki, Some(&frontend), &[alpn]);
        let answer = get_tls(inbound, &config, "/hello").await.unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (200, "echo:/hello"));
        assert_eq!(answer.version, version);
    }
    // The app, a plaintext HTTP server, got both calls, each in the caller's protocol.
    let seen = seen.all();
    let versions: Vec<_> = seen.iter().map(|s| (s.path.as_str(), s.version)).collect();
    assert_eq!(
        versions,
        [
            ("/hello", http::Version::HTTP_11),
            ("/hello", http::Version::HTTP_2)
        ]
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_strict_inbound_refuses_every_caller_without_a_certificate_of_its_trust_domain() {
    let pki = Pki::new();
    let other_ca = Pki::new();
    let (app, seen) = support::recording("app").await;
    let yaml = pki.sidecar_yaml(
        app,
        "  tls: strict\nlimits: { header_read_timeout: 500ms }\n",
    );
    let sidecar = support::sidecar(&yaml).await;
    let inbound = sidecar.addrs().inbound.unwrap();
    let admin = sidecar.addrs().admin.unwrap();

    // A caller that never starts its handshake is closed at the header read timeout.
    let mut silent = TcpStream::connect(inbound).await.unwrap();
    let closed = tokio::time::timeout(WAIT, silent.read(&mut [0u8; 16])).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    let plaintext = support::raw(inbound, b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n").await;
    assert!(!plaintext.contains("HTTP/1.1"), "{plaintext}");
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let expired = Validity::between(now - 2 * hour, now - hour).unwrap();
    let refused = [
        (
            "a certificate of another CA",
            other_ca.issue("spiffe://example.org/frontend", self::hour()),
        ),
        (
            "an expired certificate",
            pki.issue("spiffe://example.org/frontend", expired),
        ),
        (
            "a certificate of another trust domain",
            pki.issue("spiffe://other.org/frontend", self::hour()),
        ),
    ];
    for (what, certificate) in &refused {
        let answer = get_tls(inbound, &client(&pki, Some(certificate), BOTH), "/").await;
        assert!(answer.is_err(), "{what}: {answer:?}");
    }
    let anonymous = get_tls(inbound, &client(&pki, None, BOTH), "/").await;
    assert!(anonymous.is_err(), "no certificate: {anonymous:?}");
    assert_eq!(seen.len(), 0, "{:?}", seen.all());
    // Every refusal counted, and the listener still serves a caller of the domain.
    let counted = support::eventually(WAIT, || async {
        metric(admin, handshake_failures()).await == 6.0
    })
    .await;
    assert!(counted, "{}", metric(admin, handshake_failures()).await);
    let frontend = pki.issue("spiffe://example.org/frontend", self::hour());
    let answer = get_tls(inbound, &client(&pki, Some(&frontend), BOTH), "/ok").await;
    assert_eq!(answer.unwrap().status, 200);
    assert_eq!(seen.len(), 1);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_websocket_session_upgrades_over_mutual_tls() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let pki = Pki::new();
    let app = crate::websocket::websocket_echo().await;
    let sidecar = support::sidecar(&pki.sidecar_yaml(app, "  protocol: http1\n")).await;
    let frontend = pki.issue("spiffe://example.org/frontend", hour());
    let config = client(&pki, Some(&frontend), &[b"http/1.1"]);
    let tls = tls_stream(sidecar.addrs().inbound.unwrap(), &config)
        .await
        .unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async("ws://orders/chat", tls)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    socket.send(Message::text("hello")).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply, Message::text("echo:hello"));
}

#[tokio::test]
async fn a_permissive_inbound_serves_plaintext_and_mtls_on_one_port() {
    let pki = Pki::new();
    let (app, seen) = support::recording("app").await;
    let sidecar = support::sidecar(&pki.sidecar_yaml(app, "  tls: permissive\n")).await;
    let inbound = sidecar.addrs().inbound.unwrap();

    let (status, _, body) = support::get(&format!("http://{inbound}/plain")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "echo:/plain"));
    let h2c = support::http2_client()
        .get(format!("http://{inbound}/h2c").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(h2c.status(), 200);
    let frontend = pki.issue("spiffe://example.org/frontend", hour());
    let answer = get_tls(inbound, &client(&pki, Some(&frontend), BOTH), "/tls").await;
    assert_eq!(answer.unwrap().body, "echo:/tls");
    // Permissive admits plaintext, not a TLS caller the strict mode would refuse.
    let anonymous = get_tls(inbound, &client(&pki, None, BOTH), "/anonymous").await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    let paths: Vec<String> = seen.all().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/plain", "/h2c", "/tls"]);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn authorization_answers_an_unlisted_caller_403_and_the_app_never_sees_it() {
    let (collector, spans) = otlp_receiver::grpc().await;
    let pki = Pki::new();
    let (app, seen) = support::recording("app").await;
    let yaml = pki.sidecar_yaml(
        app,
        "  tls: strict\n  allow: [frontend]\n  authorize:\n    \
         - match: { path_prefix: /admin }\n      allow: ['spiffe://example.org/ops']\n",
    );
    let config = remora::build::parse("test.yaml", &yaml).unwrap();
    let tracing = TracingConfig {
        endpoint: Some(format!("http://{collector}")),
        service_name: "orders".into(),
        batch_delay: Duration::from_millis(50),
        ..Default::default()
    };
    let sidecar = remora::Sidecar::start_with(config, tracing).await.unwrap();
    let inbound = sidecar.addrs().inbound.unwrap();
    let admin = sidecar.addrs().admin.unwrap();
    let caller = |service: &str| {
        let issued = pki.issue(&format!("spiffe://example.org/{service}"), hour());
        client(&pki, Some(&issued), BOTH)
    };
    let (frontend, batch, ops) = (caller("frontend"), caller("batch"), caller("ops"));

    let status = |answer: Result<Answer, BoxError>| answer.unwrap().status;
    assert_eq!(status(get_tls(inbound, &frontend, "/orders").await), 200);
    let denied = get_tls(inbound, &batch, "/orders").await.unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(denied.error_header.as_deref(), Some("forbidden"));
    assert!(
        denied.body.contains("spiffe://example.org/batch"),
        "{denied:?}"
    );
    assert_eq!(
        status(get_tls(inbound, &frontend, "/admin/users").await),
        403
    );
    assert_eq!(status(get_tls(inbound, &ops, "/admin/users").await), 200);
    assert_eq!(status(get_tls(inbound, &ops, "/orders").await), 403);
    let paths: Vec<String> = seen.all().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/orders", "/admin/users"]);

    let denied = |caller: &str| {
        format!("remora_requests_denied_total{{listener=\"inbound\",caller=\"spiffe://example.org/{caller}\"}}")
    };
    for caller in ["batch", "frontend", "ops"] {
        assert_eq!(metric(admin, &denied(caller)).await, 1.0, "{caller}");
    }
    sidecar.handle().tracing().flush().await;
    let spans = spans.wait_for(5, WAIT).await;
    let refused: Vec<_> = spans
        .iter()
        .filter(|s| s.events.iter().any(|e| e == "authorization denied"))
        .collect();
    assert_eq!(refused.len(), 3, "{spans:#?}");
    let callers: HashSet<_> = refused
        .iter()
        .map(|s| s.attr("remora.peer.identity").unwrap_or_default())
        .collect();
    let expected = ["batch", "frontend", "ops"].map(|s| format!("spiffe://example.org/{s}"));
    assert_eq!(callers, expected.iter().map(String::as_str).collect());
    sidecar.shutdown().await;
}

#[tokio::test]
async fn the_access_log_and_the_denial_log_name_the_caller() {
    // The real binary, its log read from its stderr: a log capture in this process
    // would share `tracing`'s callsite state with every test running beside it.
    let pki = Pki::new();
    let (app, _) = support::recording("app").await;
    let (admin, port) = (support::free_port(), support::free_port());
    let yaml = pki
        .sidecar_yaml(app, "  allow: [frontend]\n")
        .replacen(
            "listen: 127.0.0.1:0",
            &format!("listen: 127.0.0.1:{admin}"),
            1,
        )
        .replacen(
            "listen: 127.0.0.1:0",
            &format!("listen: 127.0.0.1:{port}"),
            1,
        );
    let path = pki.path("remora.yaml");
    std::fs::write(&path, yaml).unwrap();
    let process = support::Process::run(&path, SocketAddr::from(([127, 0, 0, 1], admin))).await;
    let inbound = SocketAddr::from(([127, 0, 0, 1], port));
    let caller = |service: &str| {
        let issued = pki.issue(&format!("spiffe://example.org/{service}"), hour());
        client(&pki, Some(&issued), BOTH)
    };
    let admitted = get_tls(inbound, &caller("frontend"), "/admitted").await;
    assert_eq!(admitted.unwrap().status, 200);
    let denied = get_tls(inbound, &caller("batch"), "/denied").await;
    assert_eq!(denied.unwrap().status, 403);

    let lines = |parts: &'static [&'static str]| {
        let log = process.log();
        let found: Vec<String> = log
            .lines()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .map(str::to_string)
            .collect();
        (found, log)
    };
    let logged = support::eventually(WAIT, || async {
        lines(&["remora::access", "/denied", "authorization denied"])
            .0
            .is_empty()
            && !lines(&["remora::access", "/denied"]).0.is_empty()
    })
    .await;
    let (denied, log) = lines(&["remora::access", "/denied", "status=403"]);
    assert!(logged && denied.len() == 1, "{log}");
    assert!(
        denied[0].contains("peer_identity=\"spiffe://example.org/batch\""),
        "{log}"
    );
    let (admitted, _) = lines(&[
        "remora::access",
        "/admitted",
        "status=200",
        "peer_identity=\"spiffe://example.org/frontend\"",
    ]);
    assert_eq!(admitted.len(), 1, "{log}");
    let (refusal, _) = lines(&["authorization denied", "spiffe://example.org/batch"]);
    assert_eq!(refusal.len(), 1, "{log}");
}

/// A tonic client of the echo service over mutual TLS to `addr`.
async fn grpc_client(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> EchoClient<tonic::transport::Channel> {
    let connector = tower::service_fn(move |_: http::Uri| {
        let config = config.clone();
        async move { tls_stream(addr, &config).await.map(TokioIo::new) }
    });
    let channel = tonic::transport::Endpoint::from_static("http://orders")
        .connect_with_connector(connector)
        .await
        .unwrap();
    EchoClient::new(channel)
}

#[tokio::test]
async fn authorization_answers_an_unlisted_grpc_caller_permission_denied() {
    let pki = Pki::new();
    let (app, calls) = echo::serve_counting().await;
    let yaml = pki.sidecar_yaml(
        app,
        "  protocol: http2\n  allow: ['*']\n  authorize:\n    \
         - match: { grpc_method: remora.echo.v1.Echo/Unary }\n      allow: [frontend]\n",
    );
    let sidecar = support::sidecar(&yaml).await;
    let inbound = sidecar.addrs().inbound.unwrap();
    let caller = |service: &str| {
        let issued = pki.issue(&format!("spiffe://example.org/{service}"), hour());
        client(&pki, Some(&issued), &[b"h2"])
    };
    let mut frontend = grpc_client(inbound, caller("frontend")).await;
    let mut batch = grpc_client(inbound, caller("batch")).await;

    let reply = frontend.unary(echo::request("hi")).await.unwrap();
    assert_eq!(reply.into_inner().message, "hi");
    let refused = batch.unary(echo::request("hi")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // Another method of the service falls under `allow: ['*']`.
    assert_eq!(
        echo::stream_to_end(&mut batch, "2").await,
        (2, tonic::Code::Ok)
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the refused call reached the app"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_permissive_inbound_with_an_allow_list_refuses_plaintext_callers() {
    let pki = Pki::new();
    let (app, seen) = support::recording("app").await;
    let yaml = pki.sidecar_yaml(app, "  tls: permissive\n  allow: [frontend]\n");
    let sidecar = support::sidecar(&yaml).await;
    let inbound = sidecar.addrs().inbound.unwrap();
    let admin = sidecar.addrs().admin.unwrap();
    let (status, headers, _) = support::get(&format!("http://{inbound}/plain")).await;
    assert_eq!(status, 403);
    assert_eq!(headers["x-remora-error"], "forbidden");
    let frontend = pki.issue("spiffe://example.org/frontend", hour());
    let answer = get_tls(inbound, &client(&pki, Some(&frontend), BOTH), "/tls").await;
    assert_eq!(answer.unwrap().status, 200);
    assert_eq!(seen.len(), 1);
    let series = "remora_requests_denied_total{listener=\"inbound\",caller=\"unauthenticated\"}";
    assert_eq!(metric(admin, series).await, 1.0);
    sidecar.shutdown().await;
}

/// Runs `command` (with `input` on its stdin) off the runtime's thread, bounded by
/// 20 s (coreutils `timeout`); returns whether it succeeded, and its stdout then stderr.
async fn run(program: &str, args: Vec<String>, input: &'static [u8]) -> (bool, String) {
    let program = program.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("timeout")
            .arg("20")
            .arg(&program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let output = child.wait_with_output().unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn curl_and_openssl_call_the_inbound_with_a_client_certificate() {
    let pki = Pki::new();
    let (app, seen) = support::recording("app").await;
    let sidecar = support::sidecar(&pki.sidecar_yaml(app, "  tls: strict\n")).await;
    let inbound = sidecar.addrs().inbound.unwrap();
    pki.write("spiffe://example.org/frontend");
    let file = |name: &str| pki.path(name).display().to_string();
    let port = inbound.port();
    let curl = |with_certificate: bool| {
        let mut args: Vec<String> = ["--silent", "--show-error", "--max-time", "10"]
            .map(String::from)
            .to_vec();
        if with_certificate {
            args.extend([
                "--cert".into(),
                file("frontend.pem"),
                "--key".into(),
                file("frontend-key.pem"),
            ]);
        }
        args.extend([
            "--cacert".into(),
            file("ca.pem"),
            "--resolve".into(),
            format!("orders:{port}:127.0.0.1"),
            format!("https://orders:{port}/curl"),
        ]);
        args
    };
    let (ok, output) = run("curl", curl(true), b"").await;
    assert!(ok && output.starts_with("echo:/curl"), "{output}");
    let (ok, output) = run("curl", curl(false), b"").await;
    assert!(!ok, "curl without a certificate got through: {output}");

    let args = [
        "s_client",
        "-connect",
        &inbound.to_string(),
        "-servername",
        "orders",
        "-cert",
        &file("frontend.pem"),
        "-key",
        &file("frontend-key.pem"),
        "-CAfile",
        &file("ca.pem"),
        "-verify_return_error",
        "-ign_eof",
    ]
    .map(String::from)
    .to_vec();
    let request = b"GET /openssl HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n";
    let (_, output) = run("openssl", args, request).await;
    assert!(output.contains("Verify return code: 0 (ok)"), "{output}");
    assert!(output.contains("HTTP/1.1 200 OK"), "{output}");
    assert!(output.contains("echo:/openssl"), "{output}");
    let paths: Vec<String> = seen.all().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/curl", "/openssl"]);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn rewritten_certificate_files_rotate_new_connections_without_a_failed_call() {
    let pki = Pki::new();
    let (app, _) = support::recording("app").await;
    let sidecar = support::sidecar(&pki.sidecar_yaml(app, "  tls: strict\n")).await;
    let inbound = sidecar.addrs().inbound.unwrap();
    let frontend = pki.issue("spiffe://example.org/frontend", hour());
    let config = client(&pki, Some(&frontend), BOTH);
    let first = get_tls(inbound, &config, "/").await.unwrap().serial;

    let stop = Arc::new(AtomicBool::new(false));
    let serials = Arc::new(Mutex::new(HashSet::new()));
    let looping = {
        let (stop, serials, config) = (stop.clone(), serials.clone(), config.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut calls = 0;
            while !stop.load(Ordering::SeqCst) {
                calls += 1;
                match get_tls(inbound, &config, "/").await {
                    Ok(answer) if answer.status == 200 => {
                        serials.lock().unwrap().insert(answer.serial);
                    }
                    Ok(answer) => failures.push(format!("status {}", answer.status)),
                    Err(error) => failures.push(error.to_string()),
                }
            }
            (calls, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rotated = pki.write("spiffe://example.org/orders");
    let new = CertificateInfo::parse(&rotated.chain()[0])
        .unwrap()
        .serial_hex();
    assert_ne!(new, first);
    let seen_new =
        support::eventually(WAIT, || async { serials.lock().unwrap().contains(&new) }).await;
    stop.store(true, Ordering::SeqCst);
    let (calls, failures) = looping.await.unwrap();
    assert!(
        seen_new,
        "no connection saw the new certificate in {calls} calls"
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:?}",
        failures.len()
    );
    assert_eq!(get_tls(inbound, &config, "/").await.unwrap().serial, new);
    sidecar.shutdown().await;
}

#[test]
fn an_allow_entry_that_can_never_match_is_refused_at_its_line() {
    let pki = Pki::new();
    let yaml = pki.sidecar_yaml(
        "127.0.0.1:9".parse().unwrap(),
        "  allow:\n    - frontend\n    - spiffe://other.org/frontend\n",
    );
    let error = remora::build::parse("test.yaml", &yaml)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("test.yaml:11:7: inbound.allow[1]"),
        "{error}"
    );
    assert!(error.contains("trust domain other.org"), "{error}");
}
