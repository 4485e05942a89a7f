//! TLS to servers outside the mesh, as `tls:` blocks of services, registries and the
//! trace collector configure it (`remora::tls::ExternalTls`): the CA file and the client
//! certificate are re-read when they change, and a broken rewrite leaves the previous
//! ones serving.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use remora::tls::issue::{CertificateAuthority, Validity};
use remora::tls::{CertificateInfo, ExternalTls, TrustDomain};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn hour() -> Validity {
    Validity::from_now(Duration::from_secs(3600))
}

/// A TLS server for 127.0.0.1 requiring a client certificate of `ca`; it records the
/// serial of each client's certificate and answers one byte.
async fn server(ca: &CertificateAuthority, dir: &Path) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let (cert, key) = ca
        .issue_host(&["127.0.0.1"], hour())
        .unwrap()
        .write(dir, "server")
        .unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.certificate().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serials = Arc::new(Mutex::new(Vec::new()));
    let seen = serials.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                let serial = CertificateInfo::parse(&leaf).unwrap().serial_hex();
                seen.lock().unwrap().push(serial);
                let mut byte = [0u8; 1];
                let _ = tls.read_exact(&mut byte).await;
                let _ = tls.write_all(b"k").await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, serials)
}

/// One exchange over a new connection made with `config`.
async fn exchange(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> std::io::Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = TlsConnector::from(config.clone())
        .connect(name, stream)
        .await?;
    tls.write_all(b"?").await?;
    let mut answer = [0u8; 1];
    tls.read_exact(&mut answer).await?;
    Ok(())
}

#[tokio::test]
async fn a_rewritten_client_certificate_is_presented_on_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let domain = TrustDomain::parse("outside.test").unwrap();
    let ca = CertificateAuthority::generate(&domain, hour()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.certificate_pem()).unwrap();
    let (addr, serials) = server(&ca, dir.path()).await;

    let issue = |stem: &str| {
        ca.issue_host(&["client.outside.test"], hour())
            .unwrap()
            .write(dir.path(), stem)
            .unwrap()
    };
    let (cert, key) = issue("client");
    let files = ExternalTls {
        ca: Some(dir.path().join("ca.pem")),
        client: Some((cert.clone(), key.clone())),
    };
    let config = Arc::new(files.client_config().unwrap());
    exchange(&config, addr).await.unwrap();
    let first = serials.lock().unwrap()[0].clone();

    // A new certificate replaces the files (written aside, renamed into place).
    let (new_cert, new_key) = issue("next");
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    let rotated = crate::support::eventually(Duration::from_secs(10), || async {
        exchange(&config, addr).await.unwrap();
        serials.lock().unwrap().last().unwrap() != &first
    })
    .await;
    assert!(rotated, "new connections kept presenting {first}");
    let second = serials.lock().unwrap().last().unwrap().clone();

    // A broken rewrite is refused: the second certificate keeps being presented.
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        exchange(&config, addr).await.unwrap();
        assert_eq!(serials.lock().unwrap().last().unwrap(), &second);
    }
}

/// A service outside the mesh written as `host:port` is checked against that host name
/// when its `tls` block names no `server_name`.
#[tokio::test]
async fn a_named_endpoint_is_the_default_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let domain = TrustDomain::parse("outside.test").unwrap();
    let ca = CertificateAuthority::generate(&domain, hour()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.certificate_pem()).unwrap();
    let (cert, key) = ca
        .issue_host(&["api.test.local"], hour())
        .unwrap()
        .write(dir.path(), "api")
        .unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, PrivateKeyDer::from_pem_file(&key).unwrap())
    .unwrap();
    let (app, log) = crate::support::recording("api").await;
    let front = crate::support::tls_front::TlsFront::start(config, app).await;

    let mut zone = crate::support::dns::Zone::start().await;
    zone.set_a("api.test.local.", 60, &[1]).await;
    let caller = crate::support::sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         resolver: {{ nameserver: {} }}\n\
         services:\n  api:\n    listen: 127.0.0.1:0\n    endpoints: [api.test.local:{}]\n    tls: {{ ca: {} }}\n",
        zone.server,
        front.addr.port(),
        dir.path().join("ca.pem").display()
    ))
    .await;
    let url = format!("http://{}/hello", caller.addrs().service("api").unwrap());
    let (status, _, body) = crate::support::get(&url).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "echo:/hello"));
    assert_eq!(log.len(), 1);
}
