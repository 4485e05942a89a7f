//! Apache Curator itself, for the ZooKeeper tests: `support/curator/CuratorProbe.java`
//! compiled against Debian's `libcurator-discovery-java` (Curator 5), which registers an
//! instance as a Java service does and lists a service as a Java caller reads it. Its
//! payload class is a stand-in with the name and properties of Spring Cloud Zookeeper's
//! `ZookeeperInstance`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// The Curator jar; its manifest names the jars it needs.
const JAR: &str = "/usr/share/java/curator-x-discovery.jar";

/// What to install when the jar or the compiler is missing.
const INSTALL: &str = "apt-get install -y libcurator-discovery-java default-jdk-headless";

/// The compiled probe.
pub struct CuratorProbe {
    classes: tempfile::TempDir,
}

/// An instance Curator keeps registered until [`stop`](Self::stop) or drop.
pub struct CuratorRegistration {
    /// The probe; taken by `stop`.
    child: Option<Child>,
    /// Its standard input: closing it unregisters.
    stdin: Option<ChildStdin>,
}

impl CuratorProbe {
    /// Compiles the probe. Panics (never skips) without Curator or a JDK.
    pub async fn compile() -> CuratorProbe {
        assert!(
            Path::new(JAR).exists(),
            "{JAR} is missing; the Curator tests need it: {INSTALL}"
        );
        let classes = tempfile::tempdir().expect("a temporary directory");
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/curator");
        let mut javac = Command::new("javac");
        javac
            .args(["-nowarn", "-cp", JAR, "-d"])
            .arg(classes.path())
            .arg(sources.join("CuratorProbe.java"))
            .arg(
                sources
                    .join("org/springframework/cloud/zookeeper/discovery/ZookeeperInstance.java"),
            );
        let output = match tokio::task::spawn_blocking(move || javac.output())
            .await
            .unwrap()
        {
            Ok(output) => output,
            Err(error) => panic!("cannot run javac ({error}): {INSTALL}"),
        };
        assert!(
            output.status.success(),
            "javac failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        CuratorProbe { classes }
    }

    fn command(&self, server: &str) -> Command {
        let mut command = Command::new("java");
        command
            .arg("-cp")
            .arg(format!("{JAR}:{}", self.classes.path().display()))
            .arg("CuratorProbe")
            .arg(server);
        command
    }

    /// Registers `service`/`id` at `addr` through Curator; returns once it is registered.
    pub async fn register(
        &self,
        server: &str,
        service: &str,
        id: &str,
        addr: std::net::SocketAddr,
    ) -> CuratorRegistration {
        let mut child = self
            .command(server)
            .args(["register", service, id, &addr.ip().to_string()])
            .arg(addr.port().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start java: {e}"));
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(line.trim(), "registered", "Curator registered the instance");
        let stdin = child.stdin.take();
        CuratorRegistration {
            child: Some(child),
            stdin,
        }
    }

    /// The instances of `service` as Curator reads them, one line each:
    /// `id address port serviceType enabled payloadId {metadata}`.
    pub async fn list(&self, server: &str, service: &str) -> Vec<String> {
        let mut command = self.command(server);
        command.args(["list", service]);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot start java: {e}"));
        assert!(
            output.status.success(),
            "Curator could not list {service}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }
}

impl CuratorRegistration {
    /// Unregisters through Curator and waits for the probe to exit.
    pub async fn stop(mut self) {
        self.stdin.take();
        let mut child = self.child.take().expect("running");
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "the probe exited with {status}");
    }
}

impl Drop for CuratorRegistration {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
