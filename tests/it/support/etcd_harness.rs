//! A real etcd for the discovery tests: one single-member cluster on free loopback ports
//! in a temporary data directory, killed on drop and restartable in place, optionally
//! with a second client listener over mutual TLS ([`Etcd::start_tls`]); and a
//! [`Gate`], a TCP relay that a test can cut to disconnect a client from etcd.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What to install when the binary is missing.
const INSTALL: &str = "apt-get install -y etcd-server";

/// A running etcd server.
pub struct Etcd {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// The HTTPS client listener, beside the plain one the harness itself uses.
    tls: Option<(EtcdTls, u16)>,
    child: Option<Child>,
}

/// The PEM files of an HTTPS client listener that requires client certificates.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The server's certificate (with a SAN for 127.0.0.1).
    pub cert: std::path::PathBuf,
    /// Its key.
    pub key: std::path::PathBuf,
    /// The CA client certificates must chain to.
    pub client_ca: std::path::PathBuf,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Etcd {
    /// Starts etcd and waits until it answers. Panics (never skips) without the binary.
    pub async fn start() -> Etcd {
        let mut etcd = Etcd {
            dir: tempfile::tempdir().expect("a temporary directory"),
            client_port: free_port(),
            peer_port: free_port(),
            tls: None,
            child: None,
        };
        etcd.spawn().await;
        etcd
    }

    /// Starts etcd with a second client listener, `https://`, that presents `tls.cert`
    /// and requires a client certificate chaining to `tls.client_ca`
    /// (`--client-cert-auth`). The plain listener stays, for the harness and the test's
    /// own reads and writes.
    pub async fn start_tls(tls: EtcdTls) -> Etcd {
        let mut etcd = Etcd {
            dir: tempfile::tempdir().expect("a temporary directory"),
            client_port: free_port(),
            peer_port: free_port(),
            tls: Some((tls, free_port())),
            child: None,
        };
        etcd.spawn().await;
        etcd
    }

    /// The HTTPS client URL of [`start_tls`](Self::start_tls).
    pub fn tls_endpoint(&self) -> String {
        let (_, port) = self.tls.as_ref().expect("started with start_tls");
        format!("https://127.0.0.1:{port}")
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// A plain client, for the test's own reads and writes.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .expect("connect to the test etcd")
    }

    /// Kills etcd (like a crash) without starting it again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd and starts it again on the same ports and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Starts etcd again after [`kill`](Self::kill).
    pub async fn spawn(&mut self) {
        let mut client = self.endpoint();
        let mut secure = Vec::new();
        if let Some((tls, port)) = &self.tls {
            client.push_str(&format!(",https://127.0.0.1:{port}"));
            secure.push(format!("--cert-file={}", tls.cert.display()));
            secure.push(format!("--key-file={}", tls.key.display()));
            secure.push(format!("--trusted-ca-file={}", tls.client_ca.display()));
            secure.push("--client-cert-auth".to_string());
        }
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("the etcd log file");
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .args(&secure)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
                "the etcd binary is not installed; the discovery tests need a real etcd: {INSTALL}"
            ),
            Err(error) => panic!("cannot start etcd: {error}"),
        };
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("etcd exited with {status}; log:\n{}", self.log());
            }
            let attempt = async {
                let mut client = etcd_client::Client::connect([self.endpoint()], None).await?;
                client.get("ready-probe", None).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd did not answer within 20s; log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP relay to `target` that can be cut: cutting drops every relayed connection and
/// refuses new ones until it is opened again.
pub struct Gate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// A relay on a free loopback port.
    pub async fn start(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let accept = tokio::spawn({
            let open = open.clone();
            let generation = generation.clone();
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !open.load(Ordering::SeqCst) {
                        continue;
                    }
                    let mut cut = generation.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let mut inbound = inbound;
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            }
        });
        Gate {
            addr,
            open,
            generation,
            accept,
        }
    }

    /// The URL clients use instead of etcd's.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Relays again.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
