//! A real Redis for the TCP passthrough and shared rate-limit tests: one
//! `redis-server` on a free loopback port, in memory only (no snapshot, no append-only
//! file), in a temporary directory, killed on drop, restartable on the same port and
//! able to freeze (SIGSTOP) to play a Redis that accepts but never answers; and a few
//! RESP exchanges over a raw socket, for what a client library hides (when exactly a
//! connection closes).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to install when the binary is missing.
const INSTALL: &str = "apt-get install -y redis-server";

/// A running Redis server.
pub struct Redis {
    _dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts `redis-server` and waits until it answers PING. Panics (never skips)
    /// without the binary.
    pub async fn start() -> Redis {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = super::free_port();
        let child = spawn(port, dir.path());
        let mut redis = Redis {
            _dir: dir,
            port,
            child: Some(child),
        };
        redis.wait_ready().await;
        redis
    }

    /// Starts it again on the same port after [`Redis::kill`] (empty: no scripts, no
    /// keys, as after a real crash without persistence).
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(self.port, self._dir.path()));
        self.wait_ready().await;
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing is answered.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen process (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running redis-server").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills it (like a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server exited with {status}");
            }
            if let Ok(mut stream) = TcpStream::connect(self.addr()).await {
                if ping(&mut stream).await {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not answer within 10s");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `redis-server` on `port` in `dir`. Panics (never skips) without the binary.
fn spawn(port: u16, dir: &std::path::Path) -> Child {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "the redis-server binary is not installed; the TCP and shared rate-limit tests \
             need a real Redis: {INSTALL}"
        ),
        Err(error) => panic!("cannot start redis-server: {error}"),
    }
}

/// Sends an inline `PING` on `stream` and reads the answer: whether it was `+PONG`
/// (within 2 s).
pub async fn ping(stream: &mut TcpStream) -> bool {
    command(stream, "PING").await.as_deref() == Some("+PONG\r\n")
}

/// Sends the inline command `line` and returns the first chunk of the answer, `None`
/// when the connection closed, broke or stayed silent for 2 s.
pub async fn command(stream: &mut TcpStream, line: &str) -> Option<String> {
    stream
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
    match read {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

/// The port of the Redis that answered on `stream` (`CONFIG GET port`).
pub async fn port_behind(stream: &mut TcpStream) -> Option<u16> {
    // *2\r\n$4\r\nport\r\n$<len>\r\n<port>\r\n
    let answer = command(stream, "CONFIG GET port").await?;
    answer.lines().nth(4)?.parse().ok()
}

/// Whether the peer closed `stream` (reads the end within `within`; data first means
/// it did not).
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}
