//! Turns the load generator's running statistics into what is printed: once per refresh
//! a table of the last window beside the running totals, and at the end a summary.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::stats::{ServiceStats, Tally};
use super::table::{self, Column, Row};

/// One service as the monitor follows it.
struct Followed {
    stats: Arc<ServiceStats>,
    /// Everything since the start.
    total: Tally,
    /// The window shown by the latest table.
    last: Tally,
}

/// Collects windows from every service and renders tables.
pub struct Monitor {
    services: Vec<Followed>,
    columns: Vec<Column>,
    started: Instant,
    last_tick: Instant,
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
                    last: Tally::default(),
                })
                .collect(),
            columns,
            started: now,
            last_tick: now,
        }
    }

    /// Time since the monitor started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Closes the current window of every service and renders the table for it.
    pub fn tick(&mut self) -> String {
        let now = Instant::now();
        let span_length = now - self.last_tick;
        self.last_tick = now;
        for service in &mut self.services {
            service.last = service.stats.take_window();
            service.total.merge(&service.last);
        }
        let rows: Vec<Row<'_>> = self
            .services
            .iter()
            .map(|service| Row {
                service: &service.stats.name,
                kind: service.stats.kind,
                span: &service.last,
                span_length,
                total: &service.total,
            })
            .collect();
        table::render(&self.columns, &rows)
    }

    /// Collects what is left and renders the whole run as one table.
    pub fn summary(&mut self) -> String {
        for service in &mut self.services {
            let rest = service.stats.take_window();
            service.total.merge(&rest);
        }
        let span_length = self.elapsed();
        let rows: Vec<Row<'_>> = self
            .services
            .iter()
            .map(|service| Row {
                service: &service.stats.name,
                kind: service.stats.kind,
                span: &service.total,
                span_length,
                total: &service.total,
            })
            .collect();
        table::render(&self.columns, &rows)
    }

    /// Each service's name and its totals, in order.
    pub fn totals(&self) -> impl Iterator<Item = (&ServiceStats, &Tally)> {
        self.services
            .iter()
            .map(|service| (&*service.stats, &service.total))
    }
}
