//! `remora demo`: example services, their sidecars and a load generator in one process,
//! and a live table of what flows through them and what the resilience policies do.
//!
//! [`run_with`] starts the [`topology`] (apps behind inbound sidecars, a frontend sidecar
//! routing to them through its policies), points the [`load`] generator at the frontend,
//! plays the [`scenes`] (timed faults and bursts), and once per refresh has the
//! [`monitor`] turn the load's [`stats`] and the frontend's metrics (read by the
//! [`probe`]) into a [`table`]. The end (the duration, Ctrl-C, or closed output) stops
//! the load first, then drains every sidecar, then prints a summary. Each concern is one
//! module, so a later feature adds an app kind in `apps`, a fault in [`apps::Faults`], a
//! figure as a [`table::Column`], a scene in [`scenes::tour`], or a sidecar policy in
//! `topology`'s configs, without touching the others.

pub mod apps;
pub mod load;
pub mod monitor;
pub mod probe;
pub mod registry;
pub mod scenes;
pub mod stats;
pub mod table;
pub mod topology;

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use self::apps::AppKind;
use self::load::{LoadGenerator, LoadPlan, LoadTarget};
use self::monitor::{Monitor, SceneFigures};
use self::probe::{PolicyCounts, PolicyProbe, PolicySample};
use self::scenes::{Scene, SceneRunner, TourPlan};
use self::stats::{ServiceStats, Tally};
use self::topology::{ServiceSpec, Topology};
use crate::config::{ConfigError, LogSection};
use crate::serve::sidecar::StartError;

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
    /// The scenes to play, in order, cycling; empty keeps every app at its baseline.
    pub scenes: Vec<Scene>,
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
            scenes: scenes::tour(&TourPlan::default()),
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
    /// The scenes played, in order (a cycled script repeats its scenes), the last 64 of
    /// a long run; the last one ends with the demo.
    pub scenes: Vec<SceneReport>,
}

/// One service's totals over the whole run.
#[derive(Debug)]
pub struct ServiceReport {
    /// The service's name.
    pub name: String,
    /// What it speaks.
    pub kind: AppKind,
    /// Every call, as the load generator measured it: latencies, status buckets,
    /// answering instances, fallback answers.
    pub total: Tally,
    /// What the frontend's policies did for it, from the frontend's metrics.
    pub policy: PolicyCounts,
}

/// One scene as it played.
#[derive(Debug)]
pub struct SceneReport {
    /// Its title.
    pub title: String,
    /// When it started, from the start of the load.
    pub started: Duration,
    /// How long it played (shorter than planned when the demo ended during it).
    pub length: Duration,
    /// Each service's calls and policy figures during the scene, in configured order.
    pub services: Vec<SceneFigures>,
}

impl DemoReport {
    /// The report of the service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceReport> {
        self.services.iter().find(|service| service.name == name)
    }

    /// The scenes whose title contains `text`, in the order they played.
    pub fn scenes_titled(&self, text: &str) -> Vec<&SceneReport> {
        self.scenes
            .iter()
            .filter(|scene| scene.title.contains(text))
            .collect()
    }
}

impl SceneReport {
    /// The figures of the service called `name` during the scene.
    pub fn service(&self, name: &str) -> Option<&SceneFigures> {
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
    /// The registry file of the discovered services could not be written.
    #[error("the demo's registry file: {source}")]
    Registry {
        /// Why.
        #[source]
        source: std::io::Error,
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
    let quiet = LogSection {
        level: "error".to_string(),
        ..LogSection::default()
    };
    // No flag: nothing to refuse.
    let _log = crate::serve::telemetry::init_logging(&quiet, None);
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
    let probe = topology
        .frontend
        .addrs()
        .admin
        .and_then(|admin| PolicyProbe::new(admin).ok());
    let banner = banner(&topology, &options);
    let first_screen = match options.screen {
        Screen::Redraw => format!("{CLEAR_SCREEN}{banner}\nstarting the load...\n"),
        Screen::Append => format!("{banner}\n"),
    };
    let _ = out
        .write_all(first_screen.as_bytes())
        .and_then(|()| out.flush());

    let scenes = SceneRunner::new(options.scenes.clone(), &topology, &targets);
    let load = LoadGenerator::start(targets, options.load);
    let mut live = Live {
        monitor: Monitor::new(&stats, table::columns()),
        scenes,
        probe,
        played: Vec::new(),
        forgotten: 0,
    };
    let stop_reason = show_tables(&options, &banner, &mut live, out).await;
    let Live {
        mut monitor,
        scenes,
        probe,
        mut played,
        forgotten,
    } = live;
    let elapsed = monitor.elapsed();

    let _ = writeln!(
        out,
        "\nstopping: ending the load, then draining every sidecar"
    );
    let stopped_cleanly = tokio::time::timeout(STOP_WAIT, async {
        let load_clean = load.stop().await;
        let scenes_clean = scenes.stop().await;
        // The last figures, before the frontend (and its metrics) goes away.
        let sample = sample(probe.as_ref()).await;
        topology.shutdown().await;
        (load_clean && scenes_clean, sample)
    })
    .await;
    let (stopped_cleanly, sample) = stopped_cleanly.unwrap_or((false, None));

    if let Some(scene) = played.last_mut() {
        scene.finish(&mut monitor, sample.clone(), elapsed);
    }
    let summary = monitor.summary(sample);
    let _ = write!(
        out,
        "\nsummary over {:.1}s ({}):\n{summary}{}",
        elapsed.as_secs_f64(),
        describe_stop(stop_reason),
        describe_scenes(&played, forgotten),
    )
    .and_then(|()| out.flush());

    let services = monitor
        .totals()
        .map(|(stats, total, policy)| ServiceReport {
            name: stats.name.to_string(),
            kind: stats.kind,
            total: total.clone(),
            policy,
        })
        .collect();
    Ok(DemoReport {
        elapsed,
        stop_reason,
        stopped_cleanly,
        services,
        scenes: played,
    })
}

/// What the display loop drives: the tables, the scenes, and the metrics they read.
struct Live {
    monitor: Monitor,
    scenes: SceneRunner,
    probe: Option<PolicyProbe>,
    /// The last [`KEPT_SCENES`] scenes started; the last one is playing.
    played: Vec<SceneReport>,
    /// Scenes played before those, counted only.
    forgotten: usize,
}

/// The scenes a demo keeps for its summary: a run of hours cycles through hundreds,
/// and one kept for each would grow its memory for as long as it runs.
const KEPT_SCENES: usize = 64;

impl SceneReport {
    fn start(title: &str, started: Duration) -> Self {
        Self {
            title: title.to_string(),
            started,
            length: Duration::ZERO,
            services: Vec::new(),
        }
    }

    /// Closes the scene at `now` (from the start of the load) with its figures.
    fn finish(&mut self, monitor: &mut Monitor, sample: Option<PolicySample>, now: Duration) {
        self.length = now.saturating_sub(self.started);
        self.services = monitor.end_scene(sample);
    }
}

/// The frontend's policy metrics now, if they can be read.
async fn sample(probe: Option<&PolicyProbe>) -> Option<PolicySample> {
    match probe {
        Some(probe) => probe.sample().await,
        None => None,
    }
}

/// Prints a table every refresh and plays the scenes until the demo should stop, and
/// says why it stops.
async fn show_tables<W: Write>(
    options: &DemoOptions,
    banner: &str,
    live: &mut Live,
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
        let next_scene = live.scenes.next_change();
        let scene_due = async {
            match next_scene {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            biased;
            _ = &mut deadline => return StopReason::Duration,
            _ = &mut interrupted => return StopReason::Interrupted,
            _ = scene_due => next_scene_line(live).await,
            _ = refresh.tick() => {
                let table = live.monitor.tick(sample(live.probe.as_ref()).await);
                let seconds = live.monitor.elapsed().as_secs();
                match options.screen {
                    Screen::Redraw => format!(
                        "{CLEAR_SCREEN}{banner}\nrunning for {seconds}s, Ctrl-C to stop\n{}\n{table}",
                        scene_status(live),
                    ),
                    Screen::Append => format!("-- {seconds}s --\n{table}"),
                }
            }
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

/// Ends the scene playing, starts the next, and returns its one-line banner.
async fn next_scene_line(live: &mut Live) -> String {
    // Instances joining or leaving take the frontend a moment to see: the next scene
    // starts (and its figures count) once they have.
    live.scenes.publish_next().await;
    let now = live.monitor.elapsed();
    if let Some(scene) = live.played.last_mut() {
        let sample = sample(live.probe.as_ref()).await;
        scene.finish(&mut live.monitor, sample, now);
    } else {
        // The first scene starts with the load: nothing to close, but the scene's
        // figures start from here.
        live.monitor.end_scene(None);
    }
    let count = live.scenes.len();
    match live.scenes.advance().await {
        Some(scene) => {
            let title = scene.title.clone();
            let number = live.scenes.current().map_or(0, |(_, number, _)| number);
            keep_scene(
                &mut live.played,
                &mut live.forgotten,
                SceneReport::start(&title, now),
            );
            format!("scene {number}/{count}: {title}\n")
        }
        None => String::new(),
    }
}

/// `scene 2/5 (4s in): ...`, or nothing without scenes.
fn scene_status(live: &Live) -> String {
    match live.scenes.current() {
        Some((scene, number, started)) => format!(
            "scene {number}/{} ({}s in): {}\n",
            live.scenes.len(),
            started.elapsed().as_secs(),
            scene.title
        ),
        None => String::new(),
    }
}

/// Adds `scene` to those kept, forgetting (and counting) the oldest beyond [`KEPT_SCENES`].
fn keep_scene(played: &mut Vec<SceneReport>, forgotten: &mut usize, scene: SceneReport) {
    played.push(scene);
    if played.len() > KEPT_SCENES {
        played.remove(0);
        *forgotten += 1;
    }
}

/// One line per scene played and per service: what the policies did in it.
fn describe_scenes(played: &[SceneReport], forgotten: usize) -> String {
    let mut out = String::new();
    if played.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\nscenes:");
    if forgotten > 0 {
        let _ = writeln!(out, "  ({forgotten} earlier scenes not kept)");
    }
    for scene in played {
        let _ = writeln!(
            out,
            "{:>5.1}s-{:.1}s  {}",
            scene.started.as_secs_f64(),
            (scene.started + scene.length).as_secs_f64(),
            scene.title
        );
        for service in &scene.services {
            let calls = &service.calls;
            let _ = writeln!(
                out,
                "         {:<10} {} calls, {} ok, {} by fallback; {} retries, {} limited, \
                 breaker opened {}x",
                service.name,
                calls.requests(),
                calls.successes(),
                calls.degraded,
                service.policy.retries,
                service.policy.rate_limited,
                service.policy.breaker_opened,
            );
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of hours keeps its last scenes and a count of the others, so its memory
    /// stays flat (a one-hour soak grew about 2 KB per scene played before).
    #[test]
    fn a_long_run_keeps_its_last_scenes_and_counts_the_rest() {
        let (mut played, mut forgotten) = (Vec::new(), 0);
        for n in 0..KEPT_SCENES + 10 {
            let scene = SceneReport::start(&format!("scene {n}"), Duration::from_secs(n as u64));
            keep_scene(&mut played, &mut forgotten, scene);
        }
        assert_eq!((played.len(), forgotten), (KEPT_SCENES, 10));
        assert_eq!(played[0].title, "scene 10");
        let summary = describe_scenes(&played, forgotten);
        assert!(
            summary.contains("(10 earlier scenes not kept)"),
            "{summary}"
        );
    }
}
