//! Scripted scenes: timed changes to the apps' faults and the load, so that a person
//! watching the table sees each resilience policy of the frontend act.
//!
//! A [`Scene`] is a complete state, not a step: when it starts, every instance returns
//! to its service's baseline [`Faults`], every discovered service's registry entry to
//! the instances listed at the start, and any extra load of the previous scene stops;
//! then the scene's own [`FaultChange`]s, [`ListingChange`]s and [`ExtraLoad`]s apply.
//! So scenes can run in any order, and the list cycles for as long as the demo runs. [`tour`] is the default
//! script; [`TourPlan`] sets its timings (a test compresses them into seconds).
//!
//! The [`SceneRunner`] owns no task: the demo's display loop asks it when the next
//! scene is due ([`SceneRunner::next_change`]) and [`advance`](SceneRunner::advance)s
//! it then, so scene boundaries and tables never race. A registry change takes the
//! frontend a moment to see, so the loop first has the runner
//! [`publish_next`](SceneRunner::publish_next) the next scene's listing, and starts the
//! scene once the frontend serves it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::apps::{FaultSwitch, Faults};
use super::load::{Caller, LoadGenerator, LoadPlan, LoadTarget};
use super::registry::{DemoRegistry, Listing};
use super::stats::ServiceStats;
use super::topology::{Membership, Topology};

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
    /// Discovered services whose registry entry differs from the start's.
    pub listings: Vec<ListingChange>,
}

/// The instances a discovered service's registry entry lists during a scene: the
/// others keep running, but the frontend stops (or never starts) calling them.
#[derive(Debug, Clone, PartialEq)]
pub struct ListingChange {
    /// The service (one with [`Membership::Discovered`]).
    pub service: String,
    /// Which instances, counting from 1 (`<service>-1`).
    pub instances: Vec<usize>,
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
    /// `inventory-3` joins the registry: three instances share the calls.
    pub scale_up: Duration,
    /// `inventory-1` leaves the registry: the other two take its share, nothing fails.
    pub scale_down: Duration,
}

impl Default for TourPlan {
    /// 5 s steady, 10 s flaky, 10 s outage, 6 s recovery, 8 s burst of +200 calls/s,
    /// 6 s scaled up, 6 s scaled down: a 51 s cycle, each scene long enough for a few
    /// tables.
    fn default() -> Self {
        Self {
            steady: Duration::from_secs(5),
            flaky: Duration::from_secs(10),
            outage: Duration::from_secs(10),
            recovery: Duration::from_secs(6),
            burst: Duration::from_secs(8),
            burst_rate: 200,
            scale_up: Duration::from_secs(6),
            scale_down: Duration::from_secs(6),
        }
    }
}

/// The default script, for the default services (`catalog`, `inventory`): each
/// mechanism of the frontend's policies in turn, then `inventory` instances joining
/// and leaving its registry.
pub fn tour(plan: &TourPlan) -> Vec<Scene> {
    let scene = |title: &str, duration: Duration| Scene {
        title: title.to_string(),
        duration,
        faults: Vec::new(),
        extra_load: Vec::new(),
        listings: Vec::new(),
    };
    let list = |service: &str, instances: &[usize]| ListingChange {
        service: service.to_string(),
        instances: instances.to_vec(),
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
        Scene {
            listings: vec![list("inventory", &[1, 2, 3])],
            ..scene(
                "inventory scales up: inventory-3 joins — watch \"answered by\" show 3 instances",
                plan.scale_up,
            )
        },
        Scene {
            listings: vec![list("inventory", &[2, 3])],
            ..scene(
                "inventory scales down: inventory-1 leaves — its share drops to 0, ok% stays",
                plan.scale_down,
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
    /// Where the frontend reaches each instance (its inbound sidecar), `<name>-1` first.
    endpoints: Vec<SocketAddr>,
    /// The instances its registry entry lists at the start; `None` for a service with
    /// static endpoints.
    listed: Option<Vec<usize>>,
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
    /// Where the discovered services are listed; `None` without any.
    registry: Option<Arc<DemoRegistry>>,
    /// What the registry lists now.
    listing: Listing,
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
                endpoints: service
                    .instances
                    .iter()
                    .filter_map(|instance| instance.sidecar.addrs().inbound)
                    .collect(),
                listed: matches!(service.spec.membership, Membership::Discovered { .. })
                    .then(|| service.spec.listed_at_start()),
            })
            .collect();
        let mut runner = Self {
            scenes,
            services,
            current: None,
            extra: None,
            clean: true,
            registry: topology.registry.clone(),
            listing: Listing::new(),
        };
        runner.listing = runner.listing_during(None);
        runner
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

    /// Lists the next scene's instances in the registry and waits (a few seconds at
    /// most) until the frontend serves them. Nothing else of the scene applies yet.
    pub async fn publish_next(&mut self) {
        if self.scenes.is_empty() {
            return;
        }
        self.publish(self.next_index()).await;
    }

    /// Ends the scene playing and starts the next (the first after the last); returns
    /// it, or `None` when there are no scenes. Publishes its listing first unless
    /// [`publish_next`](Self::publish_next) did.
    pub async fn advance(&mut self) -> Option<&Scene> {
        if self.scenes.is_empty() {
            return None;
        }
        self.stop_extra().await;
        let index = self.next_index();
        self.publish(index).await;
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

    fn next_index(&self) -> usize {
        match self.current {
            Some((index, _)) => (index + 1) % self.scenes.len(),
            None => 0,
        }
    }

    /// What the registry lists during the scene at `index` (at the start for `None`).
    fn listing_during(&self, index: Option<usize>) -> Listing {
        let changes = index.map_or(&[][..], |index| &self.scenes[index].listings[..]);
        self.services
            .iter()
            .filter_map(|service| {
                let baseline = service.listed.as_ref()?;
                let listed = changes
                    .iter()
                    .find(|change| change.service == service.name)
                    .map_or(baseline, |change| &change.instances);
                let addresses = listed
                    .iter()
                    .filter_map(|n| service.endpoints.get(n.checked_sub(1)?).copied())
                    .collect();
                Some((service.name.clone(), addresses))
            })
            .collect()
    }

    /// Writes the listing of the scene at `index` when it differs from the registry's,
    /// and waits for the frontend to serve it.
    async fn publish(&mut self, index: usize) {
        for change in &self.scenes[index].listings {
            let discovered = self
                .services
                .iter()
                .any(|s| s.name == change.service && s.listed.is_some());
            if !discovered {
                tracing::warn!(service = %change.service, "demo scene lists instances of a service not discovered");
            }
        }
        let listing = self.listing_during(Some(index));
        if listing == self.listing {
            return;
        }
        let Some(registry) = &self.registry else {
            return;
        };
        match registry.publish(&listing).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("the frontend did not serve the demo registry's new listing in time")
            }
            Err(error) => tracing::warn!(%error, "cannot rewrite the demo registry"),
        }
        self.listing = listing;
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
        assert_eq!(scenes.len(), 7, "{titles:?}");
        assert!(scenes[1].title.contains("retry"));
        assert!(scenes[2].title.contains("breaker open"));
        assert!(scenes[4].title.contains("limit"));
        assert!(scenes[5].title.contains("inventory-3 joins"));
        assert!(scenes[6].title.contains("inventory-1 leaves"));
        assert_eq!(scenes[2].faults[0].instance, None);
        assert_eq!(scenes[4].extra_load[0].rate, plan.burst_rate);
        assert_eq!(scenes[5].listings[0].instances, [1, 2, 3]);
        assert_eq!(scenes[6].listings[0].instances, [2, 3]);
        let cycle: Duration = scenes.iter().map(|s| s.duration).sum();
        assert_eq!(cycle, Duration::from_secs(51));
        for scene in &scenes {
            let banner = format!("scene 7/7: {}", scene.title);
            assert!(banner.chars().count() <= 100, "{banner}");
        }
    }
}
