//! What an idle keep-alive HTTP/1.1 connection costs the sidecar in heap, and what a
//! call on a warm one allocates, counted by a global allocator that keeps the number of
//! live bytes and of large allocations: its own test binary, because the allocator
//! counts everything the process allocates (its tests take turns for the same reason).
//!
//! A sidecar runs on a runtime of its own; the clients are blocking sockets of the
//! test's thread, which allocate nothing per connection, so the heap that grows while
//! they are held open is the sidecar's. Each connection sends one request, reads the
//! whole answer and then idles, as a keep-alive client between calls does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Allocations (and growths) of read buffers at hyper's sizes so far: powers of two
/// from 8 KiB (its initial read buffer) up. Other large blocks (a debug build's boxed
/// futures) come in other sizes.
static LARGE_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
const LARGE: usize = 8192;

/// Held by each test for its whole run: the counters are the process's.
static SERIAL: Mutex<()> = Mutex::new(());

fn count(size: usize) {
    if size >= LARGE && size.is_power_of_two() {
        LARGE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
            count(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
            count(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            if new_size > layout.size() {
                count(new_size);
            }
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The target the benchmark holds remora to (`bench/run.sh`, "KiB per idle connection").
const BUDGET_PER_CONNECTION: isize = 10 * 1024;
const CONNECTIONS: usize = 300;
const REQUEST: &[u8] = b"GET /item HTTP/1.1\r\nhost: shop\r\nuser-agent: idle-test\r\n\r\n";

/// The counters' turn (held for the whole test), a sidecar for service `shop` in front
/// of [`fixed_upstream`] on a runtime of its own, and the address of its listener.
fn shop_sidecar() -> (
    std::sync::MutexGuard<'static, ()>,
    tokio::runtime::Runtime,
    remora::Sidecar,
    SocketAddr,
) {
    let serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let upstream = runtime.block_on(fixed_upstream());
    let sidecar = runtime.block_on(async {
        let yaml = format!(
            "admin: {{ listen: 127.0.0.1:0 }}\n\
             services:\n  shop:\n    listen: 127.0.0.1:0\n    endpoints: [\"{upstream}\"]\n"
        );
        let config = remora::build::parse("idle.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
        remora::Sidecar::start(config).await.unwrap()
    });
    let addr = sidecar.addrs().service("shop").expect("shop listens");
    (serial, runtime, sidecar, addr)
}

#[test]
fn an_idle_keep_alive_connection_costs_at_most_ten_kib_of_heap() {
    let (_serial, runtime, sidecar, addr) = shop_sidecar();

    // Warm up: the pool's upstream connection, lazily built state and the allocator's
    // first chunks are paid once, not per connection.
    let mut warm: Vec<TcpStream> = (0..20).map(|_| one_call(addr)).collect();
    warm.clear();
    let mut held = Vec::with_capacity(CONNECTIONS);
    let before = settled();
    for _ in 0..CONNECTIONS {
        held.push(one_call(addr));
    }
    let after = settled();
    let per_connection = (after - before) / CONNECTIONS as isize;
    eprintln!("heap per idle keep-alive connection: {per_connection} bytes");
    assert!(
        per_connection <= BUDGET_PER_CONNECTION,
        "{per_connection} bytes of heap per idle connection, over the budget of {BUDGET_PER_CONNECTION}"
    );

    // The connections still work after idling: the buffers given back come back.
    for stream in held.iter_mut().take(10) {
        call(stream);
    }
    drop(held);
    drop(sidecar);
    runtime.shutdown_timeout(Duration::from_secs(5));
}

/// Calls on a warm keep-alive connection read their small heads without allocating a
/// read buffer of hyper's default size (8 KiB) each time: one caught up with its peer
/// reads on the stack, and allocates only for what came (the patch to hyper's read
/// buffer in `third_party`). Before it, every call allocated at least two such buffers,
/// one for the caller's connection and one for the upstream's, and freed them again.
/// A head longer than the stack's read still arrives whole.
#[test]
fn calls_on_a_warm_keep_alive_connection_allocate_no_large_read_buffer() {
    let (_serial, runtime, sidecar, addr) = shop_sidecar();
    let mut stream = one_call(addr);
    for _ in 0..20 {
        call(&mut stream);
    }
    const CALLS: usize = 200;
    let before = LARGE_ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..CALLS {
        call(&mut stream);
    }
    let large = LARGE_ALLOCATIONS.load(Ordering::Relaxed) - before;
    eprintln!("read buffers of {LARGE} bytes or more over {CALLS} calls: {large}");
    assert!(
        large < CALLS / 10,
        "{large} read buffers of {LARGE} bytes or more over {CALLS} calls on a warm connection"
    );

    // A head longer than a read on the stack takes, and calls after it.
    let long = format!(
        "GET /item HTTP/1.1\r\nhost: shop\r\nx-long: {}\r\n\r\n",
        "v".repeat(6000)
    );
    stream.write_all(long.as_bytes()).unwrap();
    read_answer(&mut stream);
    for _ in 0..3 {
        call(&mut stream);
    }
    drop(stream);
    drop(sidecar);
    runtime.shutdown_timeout(Duration::from_secs(5));
}

/// Opens a connection, makes one call on it and returns it idle.
fn one_call(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    call(&mut stream);
    stream
}

/// One request and its whole answer (a head with `content-length: 2` and "ok").
fn call(stream: &mut TcpStream) {
    stream.write_all(REQUEST).unwrap();
    read_answer(stream);
}

/// Reads one answer: a 200 head with `content-length: 2`, and "ok".
fn read_answer(stream: &mut TcpStream) {
    let mut answer = [0u8; 2048];
    let mut filled = 0;
    loop {
        let read = stream.read(&mut answer[filled..]).unwrap();
        assert!(read > 0, "the sidecar closed a keep-alive connection");
        filled += read;
        let text = &answer[..filled];
        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(
                text.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(text)
            );
            if filled >= end + 4 + 2 {
                return;
            }
        }
    }
}

/// The live heap once it stops moving: the sidecar frees an idle connection's buffers
/// when it next waits on the socket, a moment after the answer was written.
fn settled() -> isize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = LIVE.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = LIVE.load(Ordering::Relaxed);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// An upstream answering every request on a connection with a fixed 200 "ok".
async fn fixed_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let mut pending = Vec::new();
                loop {
                    let Ok(read) = stream.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buffer[..read]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}
