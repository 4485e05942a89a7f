//! The `remora` command: run a sidecar, validate a config, or watch the demo.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// remora: a sidecar proxy for HTTP/1.1, HTTP/2 and gRPC, configured by one YAML file.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sidecar. The config reloads on file change and on SIGHUP; SIGTERM or Ctrl-C
    /// drains in-flight requests (up to `drain_timeout`) and exits 0.
    Run {
        /// The YAML config file (see config/reference.yaml for every option).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a config file: exit 0 if it is valid, otherwise print where it is wrong and
    /// exit 1.
    Validate {
        /// The YAML config file.
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
    /// Start example services, a sidecar for each and a load generator in this process,
    /// and print a live table of what flows through them. Needs nothing else.
    Demo {
        /// Stop after this long (e.g. `30s`); runs until Ctrl-C when omitted.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => match remora::build::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => runtime().block_on(run(config)),
        Command::Demo { duration } => runtime().block_on(remora::demo::run(duration)),
    }
}

/// The async runtime: a current-thread runtime when the process may use only one CPU
/// (`taskset -c 1`, a one-CPU cgroup quota), where a multi-thread runtime's extra
/// thread only adds cross-thread wake-ups; a multi-thread runtime otherwise.
/// `REMORA_RUNTIME=current-thread|multi-thread` overrides the choice.
fn runtime() -> tokio::runtime::Runtime {
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let current_thread = match std::env::var("REMORA_RUNTIME").as_deref() {
        Ok("current-thread") => true,
        Ok("multi-thread") => false,
        _ => one_cpu,
    };
    let mut builder = if current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    }
}

async fn run(path: PathBuf) -> ExitCode {
    let config = match remora::build::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    remora::serve::telemetry::init_logging(&config.log);
    // Before any listener is up: once the admin port answers, SIGHUP must reload.
    let hangups = remora::serve::reload::listen_for_sighup();
    let sidecar = match remora::Sidecar::start(config).await {
        Ok(sidecar) => sidecar,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let reloader = tokio::spawn(remora::serve::reload::watch(
        path,
        sidecar.handle(),
        hangups,
    ));
    shutdown_signal().await;
    reloader.abort();
    sidecar.shutdown().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
