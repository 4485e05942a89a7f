//! Turns the load generator's running statistics and the frontend's policy metrics into
//! what is printed: once per refresh a table of the last window, at each scene's end
//! its figures, and at the end a summary.
//!
//! Calls are collected from the [`ServiceStats`] into three running tallies at once (the
//! current table window, the current scene, the whole run), so a scene ending between
//! two tables changes neither table. Policy figures are differences between two
//! [`PolicySample`]s: the one read at the previous table (or scene start) and the new one.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::probe::{PolicyCounts, PolicySample};
use super::stats::{ServiceStats, Tally};
use super::table::{self, Column, PolicyFigures, Row};

/// One service as the monitor follows it.
struct Followed {
    stats: Arc<ServiceStats>,
    /// Everything since the start.
    total: Tally,
    /// Since the latest table.
    window: Tally,
    /// Since the current scene began.
    scene: Tally,
    /// The window shown by the latest table.
    last: Tally,
}

/// A read of the policy metrics and when it was taken.
#[derive(Clone)]
struct Reading {
    sample: PolicySample,
    at: Instant,
}

/// One service's figures over one scene.
#[derive(Debug, Clone)]
pub struct SceneFigures {
    /// The service.
    pub name: String,
    /// The calls made during the scene, as the load generator saw them: their counts,
    /// not their latencies (the whole run's are in the service's report).
    pub calls: Tally,
    /// What the frontend's policies did for the service during the scene.
    pub policy: PolicyCounts,
}

/// Collects windows from every service and renders tables.
pub struct Monitor {
    services: Vec<Followed>,
    columns: Vec<Column>,
    started: Instant,
    last_tick: Instant,
    /// The metrics as of the latest table, as of the current scene's start, and the
    /// newest read. Before any read, every counter is zero (the frontend just started).
    at_tick: Reading,
    at_scene: PolicySample,
    latest: PolicySample,
}

impl Monitor {
    /// Follows `services` from now on, showing `columns`.
    pub fn new(services: &[Arc<ServiceStats>], columns: Vec<Column>) -> Self {
        let now = Instant::now();
        Self {
            services: services
                .iter()
                .map(|stats| Followed {
                    stats: stats.clone(),
                    total: Tally::default(),
                    window: Tally::default(),
                    scene: Tally::default(),
                    last: Tally::default(),
                })
                .collect(),
            columns,
            started: now,
            last_tick: now,
            at_tick: Reading {
                sample: PolicySample::default(),
                at: now,
            },
            at_scene: PolicySample::default(),
            latest: PolicySample::default(),
        }
    }

    /// Time since the monitor started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Moves every call recorded so far into the running tallies.
    fn collect(&mut self) {
        for service in &mut self.services {
            let calls = service.stats.take_window();
            service.window.merge(&calls);
            service.scene.merge(&calls);
            service.total.merge(&calls);
        }
    }

    /// Closes the current window of every service and renders the table for it;
    /// `sample` is the policy metrics now (`None` if they could not be read: the
    /// policy cells then show `-`).
    pub fn tick(&mut self, sample: Option<PolicySample>) -> String {
        let now = Instant::now();
        let span_length = now - self.last_tick;
        self.last_tick = now;
        self.collect();
        for service in &mut self.services {
            service.last = std::mem::take(&mut service.window);
        }
        let figures: Vec<Option<PolicyFigures>> = match &sample {
            Some(sample) => self
                .services
                .iter()
                .map(|service| {
                    let now_figures = sample.service(&service.stats.name);
                    let before = self.at_tick.sample.service(&service.stats.name);
                    Some(PolicyFigures {
                        counts: now_figures.counts.since(&before.counts),
                        span: now - self.at_tick.at,
                        breaker: now_figures.breaker,
                    })
                })
                .collect(),
            None => vec![None; self.services.len()],
        };
        if let Some(sample) = sample {
            self.latest = sample.clone();
            self.at_tick = Reading { sample, at: now };
        }
        let rows: Vec<Row<'_>> = self
            .services
            .iter()
            .zip(figures)
            .map(|(service, policy)| Row {
                service: &service.stats.name,
                kind: service.stats.kind,
                span: &service.last,
                span_length,
                total: &service.total,
                policy,
            })
            .collect();
        table::render(&self.columns, &rows)
    }

    /// Ends the current scene: every service's calls and policy figures since it began
    /// (policy figures up to `sample`, or the newest read when `None`).
    pub fn end_scene(&mut self, sample: Option<PolicySample>) -> Vec<SceneFigures> {
        self.collect();
        if let Some(sample) = sample {
            self.latest = sample;
        }
        let figures = self
            .services
            .iter_mut()
            .map(|service| SceneFigures {
                name: service.stats.name.to_string(),
                calls: std::mem::take(&mut service.scene).without_latency(),
                policy: self
                    .latest
                    .service(&service.stats.name)
                    .counts
                    .since(&self.at_scene.service(&service.stats.name).counts),
            })
            .collect();
        self.at_scene = self.latest.clone();
        figures
    }

    /// Collects what is left and renders the whole run as one table, then each
    /// service's statuses; policy figures up to `sample` (or the newest read).
    pub fn summary(&mut self, sample: Option<PolicySample>) -> String {
        self.collect();
        if let Some(sample) = sample {
            self.latest = sample;
        }
        let span_length = self.elapsed();
        let rows: Vec<Row<'_>> = self
            .services
            .iter()
            .map(|service| {
                let figures = self.latest.service(&service.stats.name);
                Row {
                    service: &service.stats.name,
                    kind: service.stats.kind,
                    span: &service.total,
                    span_length,
                    total: &service.total,
                    policy: Some(PolicyFigures {
                        // The breaker cell shows the final state, not the run's history.
                        counts: PolicyCounts {
                            breaker_half_opened: 0,
                            ..figures.counts
                        },
                        span: span_length,
                        breaker: figures.breaker,
                    }),
                }
            })
            .collect();
        let mut out = table::render(&self.columns, &rows);
        let width = self
            .services
            .iter()
            .map(|service| service.stats.name.len())
            .max()
            .unwrap_or(0);
        for service in &self.services {
            let statuses = table::counts(service.total.statuses.iter().map(|(k, v)| (*k, *v)));
            let counts = self.latest.service(&service.stats.name).counts;
            let _ = writeln!(
                out,
                "{:<width$}  {} calls: {statuses}; {} answered by a fallback; {} retries; \
                 breaker opened {}x",
                service.stats.name,
                service.total.requests(),
                service.total.degraded,
                counts.retries,
                counts.breaker_opened,
            );
        }
        out
    }

    /// Each service, its call totals and its policy figures since the start.
    pub fn totals(&self) -> impl Iterator<Item = (&ServiceStats, &Tally, PolicyCounts)> {
        self.services.iter().map(|service| {
            (
                &*service.stats,
                &service.total,
                self.latest.service(&service.stats.name).counts,
            )
        })
    }
}
