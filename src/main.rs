//! The `remora` command: run a sidecar, validate a config, watch the demo, or issue mesh
//! certificates.
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
        #[command(flatten)]
        config: ConfigFile,
        /// The log level filter (`debug`, `remora=debug,hyper=warn`); replaces the
        /// config's `log.level` and `RUST_LOG`.
        #[arg(long, value_name = "FILTER")]
        log_level: Option<String>,
    },
    /// Check a config file: exit 0 if it is valid, otherwise print where it is wrong and
    /// exit 1.
    Validate {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Ask the admin listener the config names whether the sidecar is live (GET /live):
    /// exit 0 when it answers 200, else 1. For container health checks.
    Live {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Start example services, a sidecar for each and a load generator in this process,
    /// and print a live table of what flows through them. Needs nothing else.
    Demo {
        /// Stop after this long (e.g. `30s`); runs until Ctrl-C when omitted.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Make a CA and issue service certificates for mutual TLS between sidecars (SPIFFE
    /// identities `spiffe://<trust-domain>/<service>`, ECDSA P-256 keys).
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

/// Where the config is: `-c FILE`, `--config FILE`, a bare `FILE`, or `REMORA_CONFIG`,
/// the same for `run` and `validate`.
#[derive(clap::Args)]
struct ConfigFile {
    /// The YAML config file (see config/reference.yaml for every option).
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        env = "REMORA_CONFIG"
    )]
    flag: Option<PathBuf>,
    /// The YAML config file, as an argument.
    #[arg(value_name = "FILE", conflicts_with = "flag")]
    argument: Option<PathBuf>,
}

impl ConfigFile {
    /// The file named, or the usage error that names none.
    fn path(self) -> Result<PathBuf, ExitCode> {
        match self.argument.or(self.flag) {
            Some(path) => Ok(path),
            None => {
                eprintln!(
                    "remora: no config file: give it with -c FILE (or --config FILE, or \
                     REMORA_CONFIG)"
                );
                Err(ExitCode::from(2))
            }
        }
    }
}

#[derive(Subcommand)]
enum CertCommand {
    /// Create a CA: writes `ca.pem` (the certificate every trust bundle holds) and
    /// `ca-key.pem` (mode 0600) into DIR; refuses to replace an existing CA.
    Ca {
        /// The trust domain the CA issues identities in, e.g. `example.org`.
        #[arg(long, value_name = "DOMAIN")]
        trust_domain: String,
        /// The directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// How long the CA certificate is valid.
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        validity: Duration,
    },
    /// Issue a service certificate signed by a CA: writes `<service>.pem` (the chain) and
    /// `<service>-key.pem` (mode 0600) into DIR, replacing them atomically.
    Issue {
        /// The CA directory, holding `ca.pem` and `ca-key.pem`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The service the certificate identifies, e.g. `orders`.
        #[arg(long)]
        service: String,
        /// The trust domain; by default the one the CA names.
        #[arg(long, value_name = "DOMAIN")]
        trust_domain: Option<String>,
        /// How long the certificate is valid.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        validity: Duration,
        /// The directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// mimalloc 2, built without transparent huge pages: a call's futures and header maps are
/// mostly larger than glibc's per-thread cache takes, and mimalloc 3 over-allocates them
/// (docs/dependencies.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => match config.path() {
            Err(code) => code,
            Ok(config) => validate(&config),
        },
        Command::Run { config, log_level } => match config.path() {
            Err(code) => code,
            Ok(config) => runtime().block_on(run(config, log_level)),
        },
        Command::Live { config } => match config.path() {
            Err(code) => code,
            Ok(config) => live(&config),
        },
        Command::Demo { duration } => runtime().block_on(remora::demo::run(duration)),
        Command::Cert { command } => match cert(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("remora cert: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `remora live`: GET /live on the config's admin address (loopback when it binds every
/// address), with a 2-second limit on each step.
fn live(config: &std::path::Path) -> ExitCode {
    use std::io::{Read, Write};
    let config = match remora::config::load(config, &|_| Vec::new()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let mut admin = config.admin.listen;
    if admin.ip().is_unspecified() {
        admin.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let limit = Duration::from_secs(2);
    let answer = (|| -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&admin, limit)?;
        stream.set_read_timeout(Some(limit))?;
        stream.set_write_timeout(Some(limit))?;
        stream.write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 64];
        let read = stream.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..read]).into_owned())
    })();
    match answer {
        Ok(answer) if answer.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(answer) => {
            eprintln!(
                "{admin}/live: {}",
                answer.lines().next().unwrap_or("no answer")
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("{admin}/live: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `remora validate`: exit 0 and say so, or print where the config is wrong and exit 1.
fn validate(config: &std::path::Path) -> ExitCode {
    match remora::build::load(config) {
        Ok(_) => {
            println!("{}: ok", config.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// `remora cert ca` and `remora cert issue`: what they wrote goes to stdout.
fn cert(command: CertCommand) -> Result<(), Box<dyn std::error::Error>> {
    use remora::tls::issue::{CertificateAuthority, Validity};
    use remora::tls::{Identity, TrustDomain};

    match command {
        CertCommand::Ca {
            trust_domain,
            out,
            validity,
        } => {
            let domain = TrustDomain::parse(&trust_domain)?;
            let ca = CertificateAuthority::generate(&domain, Validity::from_now(validity))?;
            let (cert, key) = ca.write(&out)?;
            println!("CA for trust domain {domain}");
            println!("wrote {} and {}", cert.display(), key.display());
        }
        CertCommand::Issue {
            ca,
            service,
            trust_domain,
            validity,
            out,
        } => {
            let authority = CertificateAuthority::load(&ca)?;
            let domain = match (trust_domain, authority.trust_domain()) {
                (Some(name), _) => TrustDomain::parse(&name)?,
                (None, Some(domain)) => domain.clone(),
                (None, None) => return Err(remora::tls::issue::IssueError::NoTrustDomain.into()),
            };
            let identity = Identity::try_new(domain, &service)?;
            let issued = authority.issue(&identity, Validity::from_now(validity))?;
            let (cert, key) = issued.write(&out)?;
            println!(
                "{identity}, valid for {}",
                humantime::format_duration(validity)
            );
            println!("wrote {} and {}", cert.display(), key.display());
        }
    }
    Ok(())
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

async fn run(path: PathBuf, log_level: Option<String>) -> ExitCode {
    let config = match remora::build::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let _log = match remora::serve::telemetry::init_logging(&config.log, log_level.as_deref()) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("remora: --log-level: {error}");
            return ExitCode::from(2);
        }
    };
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
