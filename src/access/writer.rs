//! Where log lines go: a writer thread behind a bounded queue, so that no request waits
//! on stderr. A line that finds the queue full is dropped and counted
//! ([`dropped_lines`]) rather than blocking the call that logs it.
//!
//! The thread writes what has queued up in one `write` and then rests for
//! [`FLUSH_INTERVAL`] before it looks again, so that under load a line costs a copy
//! rather than a wake-up of the thread and a system call of its own; an idle process
//! keeps the thread blocked on the queue, and a line arriving then is written at once.
//!
//! NOTE: why not `tracing_appender`'s non-blocking writer (which this replaced): its
//! queue is a crossbeam array whose slots are all written when it is made (256 KiB of
//! an idle remora's memory at 8,192 lines, 2 MiB at its default of 65,536), and its
//! thread writes each line with a system call of its own, woken for it. The queue here
//! is a linked list of small blocks, allocated as lines arrive and freed as they go out,
//! bounded by a count. Measured in `bench/RESULTS.md` ("The access log's line").

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// Lines the queue holds before new ones are dropped: a quarter of a second of lines at
/// 30,000 calls a second, far more than arrive in one [`FLUSH_INTERVAL`].
pub const QUEUED_LINES: usize = 8 * 1024;

/// How long the writer thread rests after a write before it writes what has queued up
/// meanwhile: the longest a line waits for its write while lines keep coming.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// A write is made at the latest when this many bytes are gathered.
const BATCH_BYTES: usize = 64 * 1024;

/// How long the guard waits, when dropped, for the queued lines to be written.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(1);

/// Lines dropped by every writer of the process, because their queue was full or its
/// thread had stopped.
static DROPPED: AtomicU64 = AtomicU64::new(0);

enum Message {
    Line(Vec<u8>),
    /// Write what is queued, then answer on the sender and stop.
    Stop(Sender<()>),
}

/// The writing end: `tracing_subscriber`'s writer (one `write` per line, as its `fmt`
/// layer makes them), and the access log's (see [`super::log::Output`]).
#[derive(Debug, Clone)]
pub struct LogWriter {
    queue: Sender<Message>,
    /// Lines sent and not yet taken by the thread.
    queued: Arc<AtomicUsize>,
}

impl Write for &LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let full = self.queued.fetch_add(1, Ordering::Relaxed) >= QUEUED_LINES;
        if full || self.queue.send(Message::Line(line.to_vec())).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Stops the writer thread when dropped, once it has written what was queued (waiting
/// at most a second): keep it for the life of the process.
#[derive(Debug)]
#[must_use = "log lines still queued are lost when the guard is dropped"]
pub struct FlushGuard {
    queue: Sender<Message>,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        let (done, written) = mpsc::channel();
        if self.queue.send(Message::Stop(done)).is_ok() {
            let _ = written.recv_timeout(FLUSH_ON_EXIT);
        }
    }
}

/// A writer to stderr through the queue, and the guard that writes out what is queued
/// when dropped.
pub fn stderr_writer() -> (LogWriter, FlushGuard) {
    writer_to(io::stderr())
}

/// A writer to `out` through a queue of its own and a thread that writes it out.
fn writer_to(out: impl Write + Send + 'static) -> (LogWriter, FlushGuard) {
    let (queue, lines) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let taken = queued.clone();
    let spawned = std::thread::Builder::new()
        .name("remora-log".into())
        .spawn(move || write_out(&lines, &taken, out));
    if spawned.is_err() {
        // No thread: the receiver is gone with the closure, so every line is counted as
        // dropped rather than queued for nobody.
        eprintln!("remora: could not start the log writer thread; log lines are dropped");
    }
    let guard = FlushGuard {
        queue: queue.clone(),
    };
    (LogWriter { queue, queued }, guard)
}

/// The writer thread: waits for a line, gathers what else has queued, writes it in one
/// call, rests, and again; until told to stop or every sender is gone.
fn write_out(lines: &Receiver<Message>, queued: &AtomicUsize, mut out: impl Write) {
    let mut batch = Vec::new();
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    batch.extend_from_slice(&line);
                    if batch.len() >= BATCH_BYTES {
                        write_batch(&mut out, &mut batch);
                    }
                }
                Message::Stop(done) => {
                    write_batch(&mut out, &mut batch);
                    let _ = done.send(());
                    return;
                }
            }
            next = lines.try_recv().ok();
        }
        write_batch(&mut out, &mut batch);
        std::thread::sleep(FLUSH_INTERVAL);
    }
    write_batch(&mut out, &mut batch);
}

fn write_batch(out: &mut impl Write, batch: &mut Vec<u8>) {
    if batch.is_empty() {
        return;
    }
    // A failed write (stderr closed) loses these lines; there is nowhere to report it.
    let _ = out.write_all(batch).and_then(|()| out.flush());
    batch.clear();
}

/// Log lines dropped so far because the queue was full.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex, PoisonError};

    use super::*;

    /// An `out` that keeps what is written and counts the writes, each of which waits
    /// until the gate opens; `writing` says that one has begun.
    #[derive(Clone, Default)]
    struct Gated {
        kept: Arc<Mutex<(Vec<u8>, usize)>>,
        gate: Arc<Mutex<()>>,
        writing: Arc<AtomicBool>,
    }

    impl Gated {
        /// Writes `first` through `writer` and returns once its write waits at the
        /// closed gate: lines written after it queue up behind it.
        fn hold(&self, writer: &LogWriter, first: &[u8]) -> std::sync::MutexGuard<'_, ()> {
            let closed = self.gate.lock().unwrap();
            (&*writer).write_all(first).unwrap();
            while !self.writing.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            closed
        }
    }

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.writing.store(true, Ordering::SeqCst);
            drop(self.gate.lock().unwrap_or_else(PoisonError::into_inner));
            let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            kept.0.extend_from_slice(bytes);
            kept.1 += 1;
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_come_out_whole_in_order_gathered_and_the_guard_writes_what_is_queued() {
        let out = Gated::default();
        let (writer, guard) = writer_to(out.clone());
        let closed = out.hold(&writer, b"line 0\n");
        for n in 1..1000 {
            (&writer)
                .write_all(format!("line {n}\n").as_bytes())
                .unwrap();
        }
        drop(closed);
        drop(guard);
        let (bytes, writes) = out.kept.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let expected: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        assert_eq!(text, expected);
        // The first line, then the 999 that gathered behind it in one write.
        assert_eq!(writes, 2);
    }

    #[test]
    fn a_full_queue_drops_and_counts_lines_instead_of_waiting() {
        let out = Gated::default();
        let (writer, guard) = writer_to(out.clone());
        let closed = out.hold(&writer, b"first\n");
        let before = dropped_lines();
        for _ in 0..QUEUED_LINES + 10 {
            (&writer).write_all(b"line\n").unwrap();
        }
        let dropped = dropped_lines() - before;
        let queued = writer.queued.load(Ordering::Relaxed);
        drop(closed);
        drop(guard);
        // Other tests may drop lines of their own meanwhile: at least these ten.
        assert!(dropped >= 10, "{dropped} dropped");
        assert_eq!(queued, QUEUED_LINES);
        // The queued ones were written when the gate opened.
        let written = out.kept.lock().unwrap().0.len();
        assert_eq!(written, "first\n".len() + QUEUED_LINES * "line\n".len());
    }
}
