//! `remora demo`: example services, their sidecars and a load generator in one process,
//! and a live table of what flows through them.
//!
//! [`run_with`] starts the [`topology`] (apps behind inbound sidecars, a frontend sidecar
//! routing to them), points the [`load`] generator at the frontend, and once per refresh
//! has the [`monitor`] turn the load's [`stats`] into a [`table`]. The end (the duration,
//! Ctrl-C, or closed output) stops the load first, then drains every sidecar, then prints
//! a summary. Each concern is one module, so a later feature adds an app kind in
//! `apps`, a fault in [`apps::Faults`], a figure as a [`table::Column`], or a sidecar
//! policy in `topology`'s configs, without touching the others.

pub mod apps;
pub mod load;
pub mod monitor;
pub mod stats;
pub mod table;
pub mod topology;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use self::apps::AppKind;
use self::load::{LoadGenerator, LoadPlan, LoadTarget};
use self::monitor::Monitor;
use self::stats::{ServiceStats, Tally};
use self::topology::{ServiceSpec, Topology};
use crate::config::{ConfigError, LogConfig};
use crate::sidecar::StartError;

/// How long the apps, sidecars and load together may take to stop before the demo
/// reports an unclean stop.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// ANSI: cursor home, then clear the screen.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// What to run and how to show it.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// How often the table is printed (and the span its rates cover).
    pub refresh: Duration,
    /// How hard the load generator pushes.
    pub load: LoadPlan,
    /// The example services to start.
    pub services: Vec<ServiceSpec>,
    /// Whether each table replaces the previous one on screen.
    pub screen: Screen,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            duration: None,
            refresh: Duration::from_secs(1),
            load: LoadPlan {
                rate: 300,
                workers_per_service: 4,
            },
            services: topology::default_services(),
            screen: Screen::Append,
        }
    }
}

/// How successive tables are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Clear the terminal and redraw (for a person at a terminal).
    Redraw,
    /// Print each table after the previous one (for logs and pipes).
    Append,
}

/// Why the demo stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The requested duration passed.
    Duration,
    /// Ctrl-C.
    Interrupted,
    /// The output could no longer be written (e.g. a closed pipe).
    OutputClosed,
}

/// What the demo saw, for callers of [`run_with`].
#[derive(Debug)]
pub struct DemoReport {
    /// From the start of the load to its stop.
    pub elapsed: Duration,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Whether the load, every sidecar and every app stopped in time and without a panic.
    pub stopped_cleanly: bool,
    /// One entry per example service, in the order they were configured.
    pub services: Vec<ServiceReport>,
}

/// One service's totals over the whole run, as the load generator measured them.
#[derive(Debug)]
pub struct ServiceReport {
    /// The service's name.
    pub name: String,
    /// What it speaks.
    pub kind: AppKind,
    /// Every call: latencies, status buckets, answering instances.
    pub total: Tally,
}

impl DemoReport {
    /// The report of the service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceReport> {
        self.services.iter().find(|service| service.name == name)
    }
}

/// A failure to start the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// An example app could not listen.
    #[error("example app {name}: {source}")]
    App {
        /// The instance.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The schema's defaults could not be decoded.
    #[error("default config of the {name} sidecar: {source}")]
    Defaults {
        /// The sidecar.
        name: String,
        /// Why.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A sidecar's config is not valid.
    #[error("config of the {name} sidecar: {source}")]
    Config {
        /// The sidecar.
        name: String,
        /// What is wrong, located in its YAML rendering.
        #[source]
        source: ConfigError,
    },
    /// A sidecar could not start.
    #[error("sidecar of {name}: {source}")]
    Sidecar {
        /// The sidecar.
        name: String,
        /// Why.
        #[source]
        source: StartError,
    },
    /// The load generator cannot call a service.
    #[error("load for {service}: {reason}")]
    Caller {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
}

/// Runs the demo for `duration`, or until Ctrl-C, printing to stdout.
pub async fn run(duration: Option<Duration>) -> ExitCode {
    // Only real trouble is logged, on stderr, so that it does not bury the table;
    // `RUST_LOG` asks for more.
    crate::telemetry::init_logging(&LogConfig {
        level: "error".to_string(),
        ..LogConfig::default()
    });
    let screen = if std::io::stdout().is_terminal() {
        Screen::Redraw
    } else {
        Screen::Append
    };
    let options = DemoOptions {
        duration,
        screen,
        ..DemoOptions::default()
    };
    match run_with(options, &mut std::io::stdout()).await {
        Ok(report) if report.stopped_cleanly => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("remora demo: some parts did not stop in time");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("remora demo: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the demo as `options` say, writing tables to `out`, until the duration passes,
/// Ctrl-C, or `out` fails; then stops everything and reports the totals.
// NOTE: `out` is written synchronously: one short table a second, on a runtime whose
// other tasks are the demo's own.
pub async fn run_with<W: Write>(
    options: DemoOptions,
    out: &mut W,
) -> Result<DemoReport, DemoError> {
    let topology = Topology::start(&options.services).await?;
    let mut targets = Vec::new();
    for service in &topology.services {
        targets.push(LoadTarget {
            stats: Arc::new(ServiceStats::new(&service.spec.name, service.spec.kind)),
            caller: service.caller()?,
        });
    }
    let stats: Vec<Arc<ServiceStats>> = targets.iter().map(|t| t.stats.clone()).collect();
    let banner = banner(&topology, &options);
    let first_screen = match options.screen {
        Screen::Redraw => format!("{CLEAR_SCREEN}{banner}\nstarting the load...\n"),
        Screen::Append => format!("{banner}\n"),
    };
    let _ = out
        .write_all(first_screen.as_bytes())
        .and_then(|()| out.flush());

    let load = LoadGenerator::start(targets, options.load);
    let mut monitor = Monitor::new(&stats, table::columns());
    let stop_reason = show_tables(&options, &banner, &mut monitor, out).await;
    let elapsed = monitor.elapsed();

    let _ = writeln!(
        out,
        "\nstopping: ending the load, then draining every sidecar"
    );
    let stopped_cleanly = tokio::time::timeout(STOP_WAIT, async {
        let load_clean = load.stop().await;
        topology.shutdown().await;
        load_clean
    })
    .await
    .unwrap_or(false);

    let summary = monitor.summary();
    let _ = write!(
        out,
        "\nsummary over {:.1}s ({}):\n{summary}",
        elapsed.as_secs_f64(),
        describe_stop(stop_reason)
    )
    .and_then(|()| out.flush());

    let services = monitor
        .totals()
        .map(|(stats, total)| ServiceReport {
            name: stats.name.to_string(),
            kind: stats.kind,
            total: total.clone(),
        })
        .collect();
    Ok(DemoReport {
        elapsed,
        stop_reason,
        stopped_cleanly,
        services,
    })
}

/// Prints a table every refresh until the demo should stop, and says why it stops.
async fn show_tables<W: Write>(
    options: &DemoOptions,
    banner: &str,
    monitor: &mut Monitor,
    out: &mut W,
) -> StopReason {
    let deadline = async {
        match options.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    let interrupted = async {
        // Without a signal handler the demo still ends by duration or closed output.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(deadline, interrupted);
    let mut refresh = tokio::time::interval(options.refresh);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    refresh.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => return StopReason::Duration,
            _ = &mut interrupted => return StopReason::Interrupted,
            _ = refresh.tick() => {}
        }
        let table = monitor.tick();
        let seconds = monitor.elapsed().as_secs();
        let frame = match options.screen {
            Screen::Redraw => {
                format!("{CLEAR_SCREEN}{banner}\nrunning for {seconds}s, Ctrl-C to stop\n\n{table}")
            }
            Screen::Append => format!("-- {seconds}s --\n{table}"),
        };
        if out
            .write_all(frame.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return StopReason::OutputClosed;
        }
    }
}

/// What runs and where: the top of every screen.
fn banner(topology: &Topology, options: &DemoOptions) -> String {
    let names: Vec<&str> = options.services.iter().map(|s| s.name.as_str()).collect();
    format!(
        "remora demo: {} behind their sidecars, called through the {} sidecar at ~{} req/s\n\n{}",
        names.join(" and "),
        topology::FRONTEND,
        options.load.rate,
        topology.describe()
    )
}

fn describe_stop(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Duration => "duration reached",
        StopReason::Interrupted => "interrupted",
        StopReason::OutputClosed => "output closed",
    }
}
