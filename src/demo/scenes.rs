//! Scripted scenes: timed changes to the apps' faults and the load, so that a person
//! watching the table sees each resilience policy of the frontend act.
//!
//! A [`Scene`] is a complete state, not a step: when it starts, every instance returns
//! to its service's baseline [`Faults`] and any extra load of the previous scene stops,
//! then the scene's own [`FaultChange`]s and [`ExtraLoad`]s apply. So scenes can run in
//! any order, and the list cycles for as long as the demo runs. [`tour`] is the default
//! script; [`TourPlan`] sets its timings (a test compresses them into seconds).
//!
//! The [`SceneRunner`] owns no task: the demo's display loop asks it when the next
//! scene is due ([`SceneRunner::next_change`]) and [`advance`](SceneRunner::advance)s
//! it then, so scene boundaries and tables never race.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::apps::{FaultSwitch, Faults};
use super::load::{Caller, LoadGenerator, LoadPlan, LoadTarget};
use super::stats::ServiceStats;
use super::topology::Topology;

/// One timed state of the demo.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// What to watch, printed when the scene starts.
    pub title: String,
    /// How long it lasts.
    pub duration: Duration,
    /// Faults that differ from the baseline during the scene.
    pub faults: Vec<FaultChange>,
    /// Load added to the steady load during the scene.
    pub extra_load: Vec<ExtraLoad>,
}

/// A fault of one instance (or all instances) of a service during a scene.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultChange {
    /// The service.
    pub service: String,
    /// Which instance, counting from 1 (`<service>-1`); `None` for every instance.
    pub instance: Option<usize>,
    /// Share of calls answered with an error instead of the baseline's.
    pub error_rate: f64,
}

/// More calls to one service during a scene.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraLoad {
    /// The service.
    pub service: String,
    /// Extra calls per second.
    pub rate: u32,
}

/// Timings (and the burst size) of the [`tour`].
#[derive(Debug, Clone, PartialEq)]
pub struct TourPlan {
    /// Nothing injected: the baseline.
    pub steady: Duration,
    /// `catalog-1` and `inventory-1` fail half their calls: retries absorb it.
    pub flaky: Duration,
    /// Every `catalog` instance fails: the breaker opens, fallbacks answer.
    pub outage: Duration,
    /// Faults gone: the breaker probes (half-open), then closes.
    pub recovery: Duration,
    /// Extra `catalog` load over its rate limit: calls are limited, fallbacks answer.
    pub burst: Duration,
    /// Extra `catalog` calls per second during the burst.
    pub burst_rate: u32,
}

impl Default for TourPlan {
    /// 5 s steady, 10 s flaky, 10 s outage, 6 s recovery, 8 s burst of +200 calls/s:
    /// a 39 s cycle, each scene long enough for a few tables.
    fn default() -> Self {
        Self {
            steady: Duration::from_secs(5),
            flaky: Duration::from_secs(10),
            outage: Duration::from_secs(10),
            recovery: Duration::from_secs(6),
            burst: Duration::from_secs(8),
            burst_rate: 200,
        }
    }
}

/// The default script, for the default services (`catalog`, `inventory`): each
/// mechanism of the frontend's policies in turn.
pub fn tour(plan: &TourPlan) -> Vec<Scene> {
    let scene = |title: &str, duration: Duration| Scene {
        title: title.to_string(),
        duration,
        faults: Vec::new(),
        extra_load: Vec::new(),
    };
    let fail = |service: &str, instance: Option<usize>, error_rate: f64| FaultChange {
        service: service.to_string(),
        instance,
        error_rate,
    };
    vec![
        scene("steady: every instance healthy — the baseline", plan.steady),
        Scene {
            faults: vec![
                fail("catalog", Some(1), 0.5),
                fail("inventory", Some(1), 0.5),
            ],
            ..scene(
                "catalog-1 and inventory-1 fail 50% of calls — watch retry/s, ok% stays ~100%",
                plan.flaky,
            )
        },
        Scene {
            faults: vec![fail("catalog", None, 1.0)],
            ..scene(
                "every catalog instance fails — watch the breaker open, fallbacks answer 200",
                plan.outage,
            )
        },
        scene(
            "catalog recovers — watch the breaker go half-open, then closed",
            plan.recovery,
        ),
        Scene {
            extra_load: vec![ExtraLoad {
                service: "catalog".to_string(),
                rate: plan.burst_rate,
            }],
            ..scene(
                &format!(
                    "a burst of +{} catalog calls/s over its rate limit — watch limit/s",
                    plan.burst_rate
                ),
                plan.burst,
            )
        },
    ]
}

/// What a scene can change about one service.
struct Controlled {
    name: String,
    baseline: Faults,
    /// Its instances' faults, `<name>-1` first.
    switches: Vec<FaultSwitch>,
    stats: Arc<ServiceStats>,
    caller: Arc<dyn Caller>,
}

/// Workers per service of a scene's extra load.
const EXTRA_WORKERS: usize = 4;

/// Plays a list of scenes, cycling; see the module docs.
pub struct SceneRunner {
    scenes: Vec<Scene>,
    services: Vec<Controlled>,
    /// The scene playing (an index into `scenes`) and when it started.
    current: Option<(usize, Instant)>,
    /// The extra load of the scene playing.
    extra: Option<LoadGenerator>,
    /// Whether every extra load stopped cleanly so far.
    clean: bool,
}

impl SceneRunner {
    /// A runner of `scenes` over the services of `topology`, adding load through
    /// `targets` (the steady load's own stats and callers). Nothing plays until
    /// [`advance`](Self::advance).
    pub fn new(scenes: Vec<Scene>, topology: &Topology, targets: &[LoadTarget]) -> Self {
        let services = topology
            .services
            .iter()
            .zip(targets)
            .map(|(service, target)| Controlled {
                name: service.spec.name.clone(),
                baseline: service.spec.faults.clone(),
                switches: service
                    .instances
                    .iter()
                    .map(|instance| instance.app.faults.clone())
                    .collect(),
                stats: target.stats.clone(),
                caller: target.caller.clone(),
            })
            .collect();
        Self {
            scenes,
            services,
            current: None,
            extra: None,
            clean: true,
        }
    }

    /// The scene playing, its number (from 1) and when it started.
    pub fn current(&self) -> Option<(&Scene, usize, Instant)> {
        let (index, started) = self.current?;
        Some((&self.scenes[index], index + 1, started))
    }

    /// How many scenes the script has.
    pub fn len(&self) -> usize {
        self.scenes.len()
    }

    /// Whether the script is empty (the demo then stays at the baseline).
    pub fn is_empty(&self) -> bool {
        self.scenes.is_empty()
    }

    /// When the next scene is due: now if none played yet; `None` when nothing would
    /// change (no scenes, or one that is already playing).
    pub fn next_change(&self) -> Option<Instant> {
        match self.current {
            None if !self.scenes.is_empty() => Some(Instant::now()),
            Some((index, started)) if self.scenes.len() > 1 => {
                Some(started + self.scenes[index].duration)
            }
            _ => None,
        }
    }

    /// Ends the scene playing and starts the next (the first after the last); returns
    /// it, or `None` when there are no scenes.
    pub async fn advance(&mut self) -> Option<&Scene> {
        if self.scenes.is_empty() {
            return None;
        }
        self.stop_extra().await;
        let index = match self.current {
            Some((index, _)) => (index + 1) % self.scenes.len(),
            None => 0,
        };
        let scene = &self.scenes[index];
        for service in &self.services {
            for switch in &service.switches {
                switch.set(service.baseline.clone());
            }
        }
        for change in &scene.faults {
            let Some(service) = self.services.iter().find(|s| s.name == change.service) else {
                tracing::warn!(service = %change.service, "demo scene names an unknown service");
                continue;
            };
            let faults = Faults {
                error_rate: change.error_rate.clamp(0.0, 1.0),
                ..service.baseline.clone()
            };
            for (n, switch) in service.switches.iter().enumerate() {
                if change.instance.is_none_or(|wanted| wanted == n + 1) {
                    switch.set(faults.clone());
                }
            }
        }
        let targets: Vec<LoadTarget> = scene
            .extra_load
            .iter()
            .filter_map(|extra| {
                let service = self.services.iter().find(|s| s.name == extra.service)?;
                Some((service, extra.rate))
            })
            .filter(|(_, rate)| *rate > 0)
            .map(|(service, _)| LoadTarget {
                stats: service.stats.clone(),
                caller: service.caller.clone(),
            })
            .collect();
        if !targets.is_empty() {
            // NOTE: one generator per scene shares its rate evenly among the targets;
            // the tour adds load to one service.
            let rate = scene.extra_load.iter().map(|extra| extra.rate).sum();
            self.extra = Some(LoadGenerator::start(
                targets,
                LoadPlan {
                    rate,
                    workers_per_service: EXTRA_WORKERS,
                },
            ));
        }
        self.current = Some((index, Instant::now()));
        Some(&self.scenes[index])
    }

    /// Stops any extra load and puts every instance back to its baseline; says whether
    /// every extra load stopped cleanly.
    pub async fn stop(mut self) -> bool {
        self.stop_extra().await;
        for service in &self.services {
            for switch in &service.switches {
                switch.set(service.baseline.clone());
            }
        }
        self.clean
    }

    async fn stop_extra(&mut self) {
        if let Some(extra) = self.extra.take() {
            self.clean &= extra.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tour_shows_each_mechanism_in_order() {
        let plan = TourPlan::default();
        let scenes = tour(&plan);
        let titles: Vec<&str> = scenes.iter().map(|s| s.title.as_str()).collect();
        assert_eq!(scenes.len(), 5, "{titles:?}");
        assert!(scenes[1].title.contains("retry"));
        assert!(scenes[2].title.contains("breaker open"));
        assert!(scenes[4].title.contains("limit"));
        assert_eq!(scenes[2].faults[0].instance, None);
        assert_eq!(scenes[4].extra_load[0].rate, plan.burst_rate);
        let cycle: Duration = scenes.iter().map(|s| s.duration).sum();
        assert_eq!(cycle, Duration::from_secs(39));
        for scene in &scenes {
            let banner = format!("scene 1/5: {}", scene.title);
            assert!(banner.chars().count() <= 100, "{banner}");
        }
    }
}
