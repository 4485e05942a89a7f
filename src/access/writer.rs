//! Where log lines go: a writer thread behind a bounded queue, so that no request waits
//! on stderr. A line that finds the queue full is dropped and counted
//! ([`dropped_lines`]) rather than blocking the call that logs it.
//!
//! The queue is one buffer that lines are copied onto, end to end, under a lock held
//! for that copy alone; the thread swaps it for an empty one, writes what it took in
//! one `write`, and then rests for [`FLUSH_INTERVAL`] before it looks again. Under load
//! a line thus costs one copy, with no allocation, no message and no wake-up of the
//! thread; an idle process keeps the thread waiting, and the line that arrives then
//! wakes it and is written at once.
//!
//! NOTE: why not `tracing_appender`'s non-blocking writer (which this replaced): its
//! queue is a crossbeam array whose slots are all written when it is made (256 KiB of
//! an idle remora's memory at 8,192 lines, 2 MiB at its default of 65,536), and its
//! thread writes each line with a system call of its own, woken for it. Nor a channel
//! of lines (which replaced that): each line was copied into a `Vec` of its own, sent,
//! and copied again into the batch written, at about 600 instructions a line of
//! allocation, messaging and copying (`bench/RESULTS.md`, "The access log's line").

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Lines the queue holds before new ones are dropped: a quarter of a second of lines at
/// 30,000 calls a second, far more than arrive in one [`FLUSH_INTERVAL`].
pub const QUEUED_LINES: usize = 8 * 1024;

/// How long the writer thread rests after a write before it writes what has queued up
/// meanwhile: the longest a line waits for its write while lines keep coming.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// The capacity a buffer keeps between writes: a burst's larger buffer is given back
/// rather than held for the life of the process.
const KEPT_BYTES: usize = 64 * 1024;

/// How long the guard waits, when dropped, for the queued lines to be written.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(1);

/// Lines dropped by every writer of the process, because their queue was full or its
/// thread had stopped.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// What the writing ends, the guard and the thread share.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the thread when it waits for lines (or for the word to stop).
    wake: Condvar,
    /// Tells the guard that the thread has written its last lines.
    stopped: Condvar,
}

/// The lines waiting for the thread, and what the thread is doing.
#[derive(Default)]
struct Queue {
    /// Whole lines, end to end.
    bytes: Vec<u8>,
    /// How many lines `bytes` holds.
    lines: usize,
    /// The thread waits on `wake`: the next line must wake it.
    idle: bool,
    /// The guard asked the thread to write what is queued and stop.
    stop: bool,
    /// No thread takes lines any more (it stopped, or never started): lines are dropped.
    closed: bool,
    /// The thread stopped, having written its last lines (or there never was one).
    done: bool,
}

impl Shared {
    /// The queue; a panic elsewhere while it was held left nothing half-done that
    /// matters here (at worst a line cut short), so a poisoned lock is taken as it is.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writing end: `tracing_subscriber`'s writer (one `write` per line, as its `fmt`
/// layer makes them), and the access log's (see [`super::log::Output`]).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

impl fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogWriter").finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Copies `line` onto the queue, or drops and counts it when the queue is full or
    /// its thread gone; wakes the thread if it waits.
    fn queue(&self, line: &[u8]) {
        let mut queue = self.shared.lock();
        if queue.closed || queue.lines >= QUEUED_LINES {
            drop(queue);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.bytes.extend_from_slice(line);
        queue.lines += 1;
        // Only a waiting thread is signalled: a signal costs a system call.
        let wake = std::mem::take(&mut queue.idle);
        drop(queue);
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

impl Write for &LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.queue(line);
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
#[must_use = "log lines still queued are lost when the guard is dropped"]
pub struct FlushGuard {
    shared: Arc<Shared>,
}

impl fmt::Debug for FlushGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlushGuard").finish_non_exhaustive()
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.stop = true;
        drop(queue);
        self.shared.wake.notify_one();
        let queue = self.shared.lock();
        let _ = self
            .shared
            .stopped
            .wait_timeout_while(queue, FLUSH_ON_EXIT, |queue| !queue.done);
    }
}

/// A writer to stderr through the queue, and the guard that writes out what is queued
/// when dropped.
pub fn stderr_writer() -> (LogWriter, FlushGuard) {
    writer_to(io::stderr())
}

/// A writer to `out` through a queue of its own and a thread that writes it out.
fn writer_to(out: impl Write + Send + 'static) -> (LogWriter, FlushGuard) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        stopped: Condvar::new(),
    });
    let taken = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("remora-log".into())
        .spawn(move || write_out(&taken, out));
    if spawned.is_err() {
        // No thread: every line is counted as dropped rather than queued for nobody.
        eprintln!("remora: could not start the log writer thread; log lines are dropped");
        let mut queue = shared.lock();
        queue.closed = true;
        queue.done = true;
    }
    let guard = FlushGuard {
        shared: shared.clone(),
    };
    (LogWriter { shared }, guard)
}

/// The writer thread: waits for lines, takes all that have queued, writes them in one
/// call, rests, and again; until told to stop.
fn write_out(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let stop = take_lines(shared, &mut batch);
        write_batch(&mut out, &mut batch);
        if stop {
            shared.lock().done = true;
            shared.stopped.notify_all();
            return;
        }
        std::thread::sleep(FLUSH_INTERVAL);
    }
}

/// Waits until lines are queued or the guard says stop, then swaps the queue's buffer
/// for `batch` (empty): the lines are written without the lock held, and the next
/// lines go into the buffer just written. Says whether to stop; once told, the queue
/// is closed as its last lines are taken, so that a later line is counted as dropped.
fn take_lines(shared: &Shared, batch: &mut Vec<u8>) -> bool {
    let mut queue = shared.lock();
    while queue.lines == 0 && !queue.stop {
        queue.idle = true;
        queue = shared
            .wake
            .wait(queue)
            .unwrap_or_else(PoisonError::into_inner);
    }
    queue.idle = false;
    std::mem::swap(&mut queue.bytes, batch);
    queue.lines = 0;
    queue.closed = queue.stop;
    queue.stop
}

/// Writes `batch` out and empties it, keeping at most [`KEPT_BYTES`] of its capacity.
fn write_batch(out: &mut impl Write, batch: &mut Vec<u8>) {
    if !batch.is_empty() {
        // A failed write (stderr closed) loses these lines; there is nowhere to report it.
        let _ = out.write_all(batch).and_then(|()| out.flush());
        batch.clear();
    }
    batch.shrink_to(KEPT_BYTES);
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
        let queued = writer.shared.lock().lines;
        drop(closed);
        drop(guard);
        // Other tests may drop lines of their own meanwhile: at least these ten.
        assert!(dropped >= 10, "{dropped} dropped");
        assert_eq!(queued, QUEUED_LINES);
        // The queued ones were written when the gate opened.
        let written = out.kept.lock().unwrap().0.len();
        assert_eq!(written, "first\n".len() + QUEUED_LINES * "line\n".len());
    }

    #[test]
    fn lines_from_several_threads_all_arrive_whole() {
        let out = Gated::default();
        let (writer, guard) = writer_to(out.clone());
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for n in 0..500 {
                        // Lines of different lengths, so that a cut or a mix shows.
                        let line = format!("{thread} {n} {}\n", "x".repeat(n % 97));
                        (&writer).write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.kept.lock().unwrap().0.clone()).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let mut fields = line.split(' ');
            let thread: usize = fields.next().unwrap().parse().unwrap();
            let n: usize = fields.next().unwrap().parse().unwrap();
            assert_eq!(fields.next().unwrap(), "x".repeat(n % 97), "{line}");
            // Each thread's lines in the order it wrote them, none missing.
            assert_eq!(n, next[thread], "{line}");
            next[thread] += 1;
        }
        assert_eq!(next, [500; 4]);
    }

    #[test]
    fn a_line_after_the_guard_is_dropped_is_counted_as_dropped() {
        let out = Gated::default();
        let (writer, guard) = writer_to(out.clone());
        (&writer).write_all(b"before\n").unwrap();
        drop(guard);
        let before = dropped_lines();
        (&writer).write_all(b"after\n").unwrap();
        assert!(dropped_lines() > before);
        assert_eq!(out.kept.lock().unwrap().0, b"before\n");
    }
}
