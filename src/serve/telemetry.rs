//! Logging: a `tracing` subscriber, plain or JSON, filtered by the config or `RUST_LOG`.
//!
//! Access log lines are events of target `remora::access` at info level, written by
//! [`crate::trace`] once per request; `RUST_LOG=info,remora::access=off` (or the
//! tracing config's `access_log: false`) silences them. Span export lives in
//! [`crate::trace`], one tracer per sidecar, not in this process-wide subscriber.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSection};

/// Installs the global subscriber, filtered by `flag` (`--log-level`) when given, else
/// by `RUST_LOG` when set, else by `config.level`; refuses a flag that is no filter.
/// Calling it twice is harmless (the second call does nothing).
pub fn init_logging(
    config: &LogSection,
    flag: Option<&str>,
) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = match flag {
        Some(level) => EnvFilter::try_new(level)?,
        None => EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&config.level))
            .unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
