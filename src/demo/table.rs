//! The table a person watches: one row per service, one [`Column`] per figure.
//!
//! A column is a header, an alignment and a function from a [`Row`] to its cell, so a new
//! figure is one more entry in [`columns`] (and, if it needs new data, one more field on
//! [`Row`]). Widths follow the widest cell, so cells can be any length.

use std::fmt::Write as _;
use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::Arc;

use super::apps::AppKind;
use super::probe::{BreakerState, PolicyCounts};
use super::stats::Tally;

/// One service's figures over one span of time.
#[derive(Debug)]
pub struct Row<'a> {
    /// The service's name.
    pub service: &'a str,
    /// What it speaks.
    pub kind: AppKind,
    /// Calls in the span the rates and percentiles describe (the last refresh, or the
    /// whole run in the summary).
    pub span: &'a Tally,
    /// The span's length.
    pub span_length: Duration,
    /// Calls since the demo started.
    pub total: &'a Tally,
    /// What the frontend's policies did, from its metrics; `None` when they could not
    /// be read.
    pub policy: Option<PolicyFigures>,
}

/// The frontend's resilience figures for one service over a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyFigures {
    /// Events in the span.
    pub counts: PolicyCounts,
    /// The span the counts cover (between two reads of the metrics).
    pub span: Duration,
    /// The service breaker's state at the end of the span.
    pub breaker: Option<BreakerState>,
}

/// Which side of its column a cell keeps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// One column of the table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Its header.
    pub header: &'static str,
    /// How its cells line up.
    pub align: Align,
    /// Its cell in `row`.
    pub cell: fn(&Row<'_>) -> String,
}

/// The demo's columns, left to right. Together they stay within 100 characters for the
/// default services (rates of up to four digits, latencies as [`latency`] writes them).
pub fn columns() -> Vec<Column> {
    vec![
        Column {
            header: "service",
            align: Align::Left,
            cell: |row| row.service.to_string(),
        },
        Column {
            header: "req/s",
            align: Align::Right,
            cell: |row| format!("{:.0}", rate(row.span.requests(), row.span_length)),
        },
        Column {
            header: "ok%",
            align: Align::Right,
            cell: |row| share(row.span.successes(), row.span.requests()),
        },
        Column {
            header: "p50",
            align: Align::Right,
            cell: |row| latency(row.span.latency_at(0.50)),
        },
        Column {
            header: "p99",
            align: Align::Right,
            cell: |row| latency(row.span.latency_at(0.99)),
        },
        Column {
            header: "retry/s",
            align: Align::Right,
            cell: |row| policy_rate(row, |counts| counts.retries),
        },
        Column {
            header: "breaker",
            align: Align::Left,
            cell: breaker,
        },
        Column {
            header: "fallbk/s",
            align: Align::Right,
            cell: |row| policy_rate(row, |counts| counts.fallbacks),
        },
        Column {
            header: "limit/s",
            align: Align::Right,
            cell: |row| policy_rate(row, |counts| counts.rate_limited),
        },
        Column {
            header: "t/o/s",
            align: Align::Right,
            cell: |row| policy_rate(row, |counts| counts.timeouts),
        },
        Column {
            header: "answered by",
            align: Align::Left,
            cell: |row| instance_shares(row.service, &row.span.instances),
        },
    ]
}

/// The table of `rows` under `columns`, one line each plus the header, `\n`-terminated.
pub fn render(columns: &[Column], rows: &[Row<'_>]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|column| (column.cell)(row)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            cells
                .iter()
                .map(|line| line[i].chars().count())
                .chain([column.header.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_string()).collect();
    write_line(&mut out, columns, &widths, &headers);
    for line in &cells {
        write_line(&mut out, columns, &widths, line);
    }
    out
}

/// One line: two spaces between columns, one between two right-aligned ones (their
/// padding already separates them), so three instances' shares still fit in 100.
fn write_line(out: &mut String, columns: &[Column], widths: &[usize], cells: &[String]) {
    let mut line = String::new();
    let mut previous: Option<Align> = None;
    for ((column, width), cell) in columns.iter().zip(widths).zip(cells) {
        if let Some(before) = previous {
            let gap = match (before, column.align) {
                (Align::Right, Align::Right) => " ",
                _ => "  ",
            };
            line.push_str(gap);
        }
        let _ = match column.align {
            Align::Left => write!(line, "{cell:<width$}"),
            Align::Right => write!(line, "{cell:>width$}"),
        };
        previous = Some(column.align);
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Calls per second.
fn rate(calls: u64, span: Duration) -> f64 {
    if span.is_zero() {
        return 0.0;
    }
    calls as f64 / span.as_secs_f64()
}

/// The service breaker's state at the end of the span; a half-open spell during the
/// span (too short for a table to catch) shows as `half→closed` or `half→open`.
fn breaker(row: &Row<'_>) -> String {
    let Some(PolicyFigures {
        breaker: Some(state),
        counts,
        ..
    }) = row.policy
    else {
        return "-".to_string();
    };
    match state {
        BreakerState::Closed | BreakerState::Open if counts.breaker_half_opened > 0 => {
            format!("half→{}", state.label())
        }
        state => state.label().to_string(),
    }
}

/// A policy counter of `row` per second; `-` when the metrics could not be read.
fn policy_rate(row: &Row<'_>, count: fn(&PolicyCounts) -> u64) -> String {
    match row.policy {
        Some(figures) => format!("{:.0}", rate(count(&figures.counts), figures.span)),
        None => "-".to_string(),
    }
}

/// `100%`, `99.5%`; `-` for no calls. Rounds down, so that `100%` means all of them.
fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_string();
    }
    if part >= whole {
        return "100%".to_string();
    }
    let tenths = (part * 1000 / whole) as f64 / 10.0;
    format!("{tenths:.1}%")
}

/// Each instance's share of the answers, named without the service's prefix:
/// `1:52% 2:48%` for `catalog-1` and `catalog-2`; `-` for none.
fn instance_shares(service: &str, instances: &BTreeMap<Arc<str>, u64>) -> String {
    let all: u64 = instances.values().sum();
    if all == 0 {
        return "-".to_string();
    }
    let text: Vec<String> = instances
        .iter()
        .map(|(name, n)| {
            let short = name
                .strip_prefix(service)
                .and_then(|rest| rest.strip_prefix('-'))
                .unwrap_or(name);
            format!("{short}:{}%", (n * 100 + all / 2) / all)
        })
        .collect();
    text.join(" ")
}

/// `0.84ms`, `12.3ms`, `250ms`, `1.50s`; `-` for nothing measured.
fn latency(value: Duration) -> String {
    if value.is_zero() {
        return "-".to_string();
    }
    match value.as_secs_f64() * 1000.0 {
        m if m < 10.0 => format!("{m:.2}ms"),
        m if m < 100.0 => format!("{m:.1}ms"),
        m if m < 1000.0 => format!("{m:.0}ms"),
        m => format!("{:.2}s", m / 1000.0),
    }
}

/// `2xx:120 5xx:3`; `-` for none.
pub fn counts<'a>(counts: impl Iterator<Item = (&'a str, u64)>) -> String {
    let text: Vec<String> = counts.map(|(name, n)| format!("{name}:{n}")).collect();
    if text.is_empty() {
        "-".to_string()
    } else {
        text.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::stats::{CallStatus, Outcome};

    fn tally(calls: &[(u64, u16, &str)]) -> Tally {
        let mut span = Tally::default();
        for (millis, status, instance) in calls {
            let outcome = Outcome {
                status: CallStatus::Http(*status),
                instance: Some(Arc::from(*instance)),
                degraded: false,
            };
            span.record(Duration::from_millis(*millis), &outcome);
        }
        span
    }

    #[test]
    fn renders_aligned_rows_under_the_header() {
        let span = tally(&[
            (1, 200, "catalog-1"),
            (2, 200, "catalog-1"),
            (30, 500, "catalog-2"),
            (3, 200, "catalog-1"),
        ]);
        let row = Row {
            service: "catalog",
            kind: AppKind::Http,
            span: &span,
            span_length: Duration::from_secs(2),
            total: &span,
            policy: Some(PolicyFigures {
                counts: PolicyCounts {
                    retries: 12,
                    fallbacks: 4,
                    ..PolicyCounts::default()
                },
                span: Duration::from_secs(2),
                breaker: Some(BreakerState::HalfOpen),
            }),
        };
        let table = render(&columns(), &[row]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        // Numbers keep right, text keeps left, under headers as wide as their cells.
        assert!(
            lines[0].starts_with("service  req/s   ok%    p50"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("catalog      2 75.0% 2.00ms"),
            "{table}"
        );
        assert_eq!(
            words(lines[1]),
            [
                "catalog",
                "2",
                "75.0%",
                "2.00ms",
                "30.0ms",
                "6",
                "half-open",
                "2",
                "0",
                "0",
                "1:75%",
                "2:25%"
            ],
            "{table}"
        );
        assert_eq!(
            lines[0].find("breaker"),
            lines[1].find("half-open"),
            "{table}"
        );
    }

    fn words(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    #[test]
    fn a_half_open_spell_shows_even_when_over() {
        let span = tally(&[(1, 200, "catalog-1")]);
        let breaker_cell = |state, half_opened| {
            let mut row = row_with_breaker(&span, state);
            if let Some(figures) = &mut row.policy {
                figures.counts.breaker_half_opened = half_opened;
            }
            words(render(&columns(), &[row]).lines().nth(1).expect("a row"))[6].to_string()
        };
        assert_eq!(breaker_cell(BreakerState::Closed, 0), "closed");
        assert_eq!(breaker_cell(BreakerState::Closed, 1), "half→closed");
        assert_eq!(breaker_cell(BreakerState::Open, 2), "half→open");
        assert_eq!(breaker_cell(BreakerState::HalfOpen, 1), "half-open");
    }

    fn row_with_breaker(span: &Tally, state: BreakerState) -> Row<'_> {
        Row {
            service: "catalog",
            kind: AppKind::Http,
            span,
            span_length: Duration::from_secs(1),
            total: span,
            policy: Some(PolicyFigures {
                counts: PolicyCounts::default(),
                span: Duration::from_secs(1),
                breaker: Some(state),
            }),
        }
    }

    #[test]
    fn unknown_policy_figures_show_as_dashes() {
        let span = tally(&[(1, 200, "inventory-1")]);
        let row = Row {
            service: "inventory",
            kind: AppKind::Grpc,
            span: &span,
            span_length: Duration::from_secs(1),
            total: &span,
            policy: None,
        };
        let table = render(&columns(), &[row]);
        let line = table.lines().nth(1).expect("a row");
        assert_eq!(words(line)[2], "100%", "{table}");
        assert_eq!(
            words(line)[5..],
            ["-", "-", "-", "-", "-", "1:100%"],
            "{table}"
        );
    }

    #[test]
    fn a_busy_row_fits_in_100_columns() {
        let calls: Vec<(u64, u16, &str)> = (0..1000)
            .map(|i| (1500, if i % 3 == 0 { 500 } else { 200 }, "inventory-1"))
            .collect();
        let mut span = tally(&calls);
        span.merge(&tally(&[(1, 200, "inventory-2")]));
        // A third instance, as while `inventory` is scaled up.
        span.merge(&tally(&[(1, 200, "inventory-3")]));
        let row = Row {
            service: "inventory",
            kind: AppKind::Grpc,
            span: &span,
            span_length: Duration::from_millis(100),
            total: &span,
            policy: Some(PolicyFigures {
                counts: PolicyCounts {
                    retries: 999,
                    fallbacks: 999,
                    rate_limited: 999,
                    timeouts: 999,
                    breaker_opened: 1,
                    breaker_half_opened: 1,
                },
                span: Duration::from_millis(100),
                breaker: Some(BreakerState::Closed),
            }),
        };
        let table = render(&columns(), &[row]);
        for line in table.lines() {
            assert!(line.chars().count() <= 100, "{} wide:\n{table}", line.len());
        }
    }

    #[test]
    fn formats_latency_by_magnitude() {
        assert_eq!(latency(Duration::ZERO), "-");
        assert_eq!(latency(Duration::from_micros(840)), "0.84ms");
        assert_eq!(latency(Duration::from_micros(12_340)), "12.3ms");
        assert_eq!(latency(Duration::from_millis(250)), "250ms");
        assert_eq!(latency(Duration::from_millis(1500)), "1.50s");
    }

    #[test]
    fn shares_round_down_to_tenths() {
        assert_eq!(share(0, 0), "-");
        assert_eq!(share(3, 3), "100%");
        assert_eq!(share(999, 1000), "99.9%");
        assert_eq!(share(1999, 2000), "99.9%");
    }
}
