//! A real ZooKeeper for the discovery tests: a standalone server (Debian's `zookeeper`
//! package, run on the machine's Java) on a free loopback port with a generated `zoo.cfg`
//! in a temporary directory, killed on drop and restartable on the same port and data.
//!
//! NOTE: one server per test, not one shared: nextest runs every test in a process of its
//! own, and a server kept in a static would outlive the test process. The JVM answers
//! within about half a second, so a test pays little for its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The server's jar; its manifest names the jars it needs.
const JAR: &str = "/usr/share/java/zookeeper.jar";

/// What to install when the jar or Java is missing.
const INSTALL: &str = "apt-get install -y zookeeper";

/// A running ZooKeeper server.
pub struct ZooKeeper {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl ZooKeeper {
    /// Starts a server and waits until it serves. Panics (never skips) without the
    /// package.
    pub async fn start() -> ZooKeeper {
        assert!(
            Path::new(JAR).exists(),
            "{JAR} is missing; the ZooKeeper tests need a real server: {INSTALL}"
        );
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        // A 100 ms tick: sessions as short as 200 ms are granted and expired ones are
        // noticed within a tick. Sessions up to a minute are allowed.
        let config = format!(
            "tickTime=100\n\
             minSessionTimeout=200\n\
             maxSessionTimeout=60000\n\
             dataDir={}\n\
             clientPort={port}\n\
             clientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=ruok\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("zoo.cfg"), config).expect("zoo.cfg written");
        let mut zk = ZooKeeper {
            dir,
            port,
            child: None,
        };
        zk.spawn().await;
        zk
    }

    /// The client address, `127.0.0.1:port`.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A client of the server, for the test's own reads and writes.
    pub async fn client(&self) -> zookeeper_client::Client {
        zookeeper_client::Client::connector()
            .with_session_timeout(Duration::from_secs(5))
            .connect(&self.server())
            .await
            .expect("connect to the test ZooKeeper")
    }

    /// Kills the server (like a crash) without starting it again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again after [`kill`](Self::kill), on the same port and data.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("zookeeper.log"))
            .expect("the ZooKeeper log file");
        let child = Command::new("java")
            .arg("-Xmx128m")
            .arg("-XX:TieredStopAtLevel=1")
            .arg("-cp")
            .arg(JAR)
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(self.dir.path().join("zoo.cfg"))
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                panic!("java is not installed; the ZooKeeper tests need it: {INSTALL}")
            }
            Err(error) => panic!("cannot start ZooKeeper: {error}"),
        };
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Waits until the server answers `ruok` and serves a session.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let server = self.server();
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("ZooKeeper exited with {status}; log:\n{}", self.log());
            }
            if tokio::task::spawn_blocking(move || ruok(addr))
                .await
                .unwrap()
            {
                let session = zookeeper_client::Client::connector()
                    .with_session_timeout(Duration::from_secs(2))
                    .with_fail_eagerly()
                    .connect(&server);
                if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(2), session).await
                {
                    if client.check_stat("/").await.is_ok() {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("ZooKeeper did not serve within 30s; log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zookeeper.log")).unwrap_or_default()
    }
}

/// Whether the server at `addr` answers the `ruok` four-letter word with `imok`.
fn ruok(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = String::new();
    stream.write_all(b"ruok").is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer == "imok"
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.kill();
    }
}
