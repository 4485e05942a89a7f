//! Where log lines go: a writer thread behind a bounded queue, so that no request waits
//! on stderr. A line that finds the queue full is dropped and counted
//! ([`dropped_lines`]) rather than blocking the call that logs it.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Lines the queue holds before new ones are dropped: a quarter of a second of lines at
/// 30,000 calls a second, while the writer thread takes one `write` per line.
///
/// NOTE: the queue's slots (32 bytes each) are all written when it is made, so they are
/// resident from the start: 256 KiB here, where 65,536 lines made 2 MiB, two thirds of
/// an idle remora's heap (`bench/RESULTS.md`, "Idle memory").
pub const QUEUED_LINES: usize = 8 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// A writer to stderr through the queue, and the guard that flushes what is queued when
/// dropped (keep it for the life of the process). The first call's counter is the one
/// [`dropped_lines`] reads.
pub fn stderr_writer() -> (NonBlocking, WorkerGuard) {
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("remora-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    (writer, guard)
}

/// Log lines dropped so far because the queue was full.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |counter| {
        u64::try_from(counter.dropped_lines()).unwrap_or(u64::MAX)
    })
}
