//! The TCP passthrough benchmark's upstream and load generator (`bench/tcp.sh`).
//!
//! `tcp_bench serve PORT` listens on `127.0.0.1:PORT`. A connection's first byte says
//! what it is: `B` (bulk) is read and discarded until the client closes; `C` (connect)
//! is answered with one byte, `k`, and closed.
//!
//! `tcp_bench bulk ADDR SECONDS CONNECTIONS` writes 64 KiB chunks as fast as the path
//! takes them on `CONNECTIONS` connections for `SECONDS`, and prints `MiB/s`.
//!
//! `tcp_bench connect ADDR SECONDS WORKERS` has `WORKERS` loops, each opening a
//! connection, sending `C`, reading `k` and the end of the stream, for `SECONDS`, and prints
//! `connections/s` (and failures, which count for nothing).
//!
//! Each runs on a current-thread runtime (the benchmark pins it to one core).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let usage = "usage: tcp_bench serve PORT | bulk ADDR SECONDS CONNECTIONS | connect ADDR SECONDS WORKERS";
    let arg = |i: usize| args.get(i).unwrap_or_else(|| panic!("{usage}"));
    match args.first().map(String::as_str) {
        Some("serve") => runtime.block_on(serve(arg(1).parse().expect("a port"))),
        Some("bulk") => {
            let (addr, secs, count) = (arg(1), arg(2), arg(3));
            let rate = runtime.block_on(bulk(
                addr.parse().expect("ADDR"),
                Duration::from_secs(secs.parse().expect("SECONDS")),
                count.parse().expect("CONNECTIONS"),
            ));
            println!("{rate:.1}");
        }
        Some("connect") => {
            let (addr, secs, count) = (arg(1), arg(2), arg(3));
            let (rate, failed) = runtime.block_on(connect(
                addr.parse().expect("ADDR"),
                Duration::from_secs(secs.parse().expect("SECONDS")),
                count.parse().expect("WORKERS"),
            ));
            println!("{rate:.0} {failed}");
        }
        _ => panic!("{usage}"),
    }
}

async fn serve(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the port");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(answer(stream));
    }
}

async fn answer(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut kind = [0u8; 1];
    if stream.read_exact(&mut kind).await.is_err() {
        return;
    }
    if kind[0] == b'C' {
        let _ = stream.write_all(b"k").await;
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// MiB/s written over `connections` connections for `duration`.
async fn bulk(addr: SocketAddr, duration: Duration, connections: usize) -> f64 {
    let written = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let written = written.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return;
            };
            let chunk = vec![b'x'; CHUNK];
            if stream.write_all(b"B").await.is_err() {
                return;
            }
            while Instant::now() < deadline {
                let write = stream.write_all(&chunk);
                let Ok(Ok(())) = tokio::time::timeout_at(deadline.into(), write).await else {
                    return;
                };
                written.fetch_add(CHUNK as u64, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let bytes = written.load(Ordering::Relaxed) as f64;
    bytes / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
}

/// Connections per second completed by `workers` loops for `duration`, and failures.
async fn connect(addr: SocketAddr, duration: Duration, workers: usize) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let once = async {
                    let mut stream = TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    stream.write_all(b"C").await?;
                    // `k`, then the end: the server closes first, so TIME_WAIT lands on
                    // its side and the client's ephemeral ports are not used up.
                    let mut reply = Vec::with_capacity(1);
                    stream.read_to_end(&mut reply).await?;
                    if reply != b"k" {
                        return Err(std::io::ErrorKind::InvalidData.into());
                    }
                    std::io::Result::Ok(())
                };
                match tokio::time::timeout(Duration::from_secs(2), once).await {
                    Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    (rate, failed.load(Ordering::Relaxed))
}
