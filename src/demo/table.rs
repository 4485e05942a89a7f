//! The table a person watches: one row per service, one [`Column`] per figure.
//!
//! A column is a header, an alignment and a function from a [`Row`] to its cell, so a new
//! figure is one more entry in [`columns`] (and, if it needs new data, one more field on
//! [`Row`]). Widths follow the widest cell, so cells can be any length.

use std::fmt::Write as _;
use std::time::Duration;

use super::apps::AppKind;
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

/// The demo's columns, left to right.
pub fn columns() -> Vec<Column> {
    vec![
        Column {
            header: "service",
            align: Align::Left,
            cell: |row| row.service.to_string(),
        },
        Column {
            header: "proto",
            align: Align::Left,
            cell: |row| row.kind.label().to_string(),
        },
        Column {
            header: "req/s",
            align: Align::Right,
            cell: |row| format!("{:.0}", rate(row.span.requests(), row.span_length)),
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
            header: "total",
            align: Align::Right,
            cell: |row| row.total.requests().to_string(),
        },
        Column {
            header: "statuses (total)",
            align: Align::Left,
            cell: |row| counts(row.total.statuses.iter().map(|(k, v)| (*k, *v))),
        },
        Column {
            header: "answered by",
            align: Align::Left,
            cell: |row| counts(row.span.instances.iter().map(|(k, v)| (&**k, *v))),
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

fn write_line(out: &mut String, columns: &[Column], widths: &[usize], cells: &[String]) {
    let mut line = String::new();
    for ((column, width), cell) in columns.iter().zip(widths).zip(cells) {
        let _ = match column.align {
            Align::Left => write!(line, "{cell:<width$}  "),
            Align::Right => write!(line, "{cell:>width$}  "),
        };
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
fn counts<'a>(counts: impl Iterator<Item = (&'a str, u64)>) -> String {
    let text: Vec<String> = counts.map(|(name, n)| format!("{name}:{n}")).collect();
    if text.is_empty() {
        "-".to_string()
    } else {
        text.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::demo::stats::{CallStatus, Outcome};

    #[test]
    fn renders_aligned_rows_under_the_header() {
        let mut span = Tally::default();
        for (millis, status) in [(1, 200), (2, 200), (30, 500)] {
            let outcome = Outcome {
                status: CallStatus::Http(status),
                instance: Some(Arc::from("catalog-1")),
            };
            span.record(Duration::from_millis(millis), &outcome);
        }
        let row = Row {
            service: "catalog",
            kind: AppKind::Http,
            span: &span,
            span_length: Duration::from_secs(1),
            total: &span,
        };
        let table = render(&columns(), &[row]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("service  proto  req/s"));
        assert!(lines[1].starts_with("catalog  http       3"));
        assert!(lines[1].contains("2xx:2 5xx:1"));
        assert!(lines[1].ends_with("catalog-1:3"));
    }

    #[test]
    fn formats_latency_by_magnitude() {
        assert_eq!(latency(Duration::ZERO), "-");
        assert_eq!(latency(Duration::from_micros(840)), "0.84ms");
        assert_eq!(latency(Duration::from_micros(12_340)), "12.3ms");
        assert_eq!(latency(Duration::from_millis(250)), "250ms");
        assert_eq!(latency(Duration::from_millis(1500)), "1.50s");
    }
}
