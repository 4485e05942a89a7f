//! Logging: a `tracing` subscriber, plain or JSON, filtered by the config or `RUST_LOG`.
//!
//! Access log lines are of target `remora::access` at info level, written by
//! [`crate::trace`] once per request; `RUST_LOG=info,remora::access=off` (or the
//! tracing config's `access_log: false`) silences them. remora writes them itself, in
//! the subscriber's format, plain or JSON (see [`crate::access::log`]). Span export lives in
//! [`crate::trace`], one tracer per sidecar, not in this process-wide subscriber.

use tracing_subscriber::EnvFilter;

use crate::access::Output;
use crate::config::{LogFormat, LogSection};

/// Flushes the queued log lines when dropped: keep it until the process ends.
#[must_use = "log lines still queued are lost when the guard is dropped"]
pub struct LogGuard {
    _flush: crate::access::FlushGuard,
}

/// Installs the global subscriber, filtered by `flag` (`--log-level`) when given, else
/// by `RUST_LOG` when set, else by `config.level`; refuses a flag that is no filter.
/// Lines go to stderr through a writer thread ([`crate::access::stderr_writer`]): no
/// request waits on a log write, and a line that finds the queue full is dropped and
/// counted in `remora_log_lines_dropped_total`. Calling it twice is harmless (the
/// second call installs nothing).
pub fn init_logging(
    config: &LogSection,
    flag: Option<&str>,
) -> Result<LogGuard, tracing_subscriber::filter::ParseError> {
    let filter = match flag {
        Some(level) => EnvFilter::try_new(level)?,
        None => EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&config.level))
            .unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let (writer, guard) = crate::access::stderr_writer();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer.clone());
    let (installed, output) = match config.format {
        LogFormat::Plain => (builder.try_init(), Output::Plain(writer)),
        LogFormat::Json => (
            builder.json().flatten_event(true).try_init(),
            Output::Json(writer),
        ),
    };
    if installed.is_ok() {
        crate::access::set_output(output);
    }
    Ok(LogGuard { _flush: guard })
}
