//! Samples read out of Prometheus / OpenMetrics text the way a scraper reads them. A
//! series is named exactly as exposed, name and labels in their order
//! (`remora_retries_total{service="svc"}`).
//!
//! A series that is not there fails the test, naming it and the series nearest to it, so
//! that a misspelled name or label cannot pass as a zero. [`metric_or_zero`] and
//! [`value_or_zero`] are for the checks that mean "absent or zero": a labelled counter
//! appears only once something counts in it, and prometheus-client leaves a family
//! without samples out entirely (no `# TYPE` line either), so absence cannot tell a
//! misspelled series from one not counted yet. Each caller says why absence is the
//! expected reading, and pairs it with a reading of the same spelling that is non-zero.

use std::net::SocketAddr;

/// How many near candidates a failure lists.
const CANDIDATES: usize = 8;

/// A sidecar's `/metrics` text.
pub async fn scrape(admin: SocketAddr) -> String {
    let (status, _, text) = super::get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200, "GET /metrics: {text}");
    text
}

/// The value of `series` on the sidecar's `/metrics`; panics, naming the series and the
/// near candidates, when no sample has it.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    value(&scrape(admin).await, series)
}

/// The value of `series` on the sidecar's `/metrics`, 0 when no sample has it. Only where
/// absent means zero (see the module doc).
pub async fn metric_or_zero(admin: SocketAddr, series: &str) -> f64 {
    value_or_zero(&scrape(admin).await, series)
}

/// The value of `series` in `text`, if a sample has it.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    samples(text)
        .find(|(name, _)| *name == series)
        .map(|(_, value)| value)
}

/// The value of `series` in `text`; panics, naming the series and the near candidates,
/// when no sample has it.
#[track_caller]
pub fn value(text: &str, series: &str) -> f64 {
    let Some(value) = sample(text, series) else {
        panic!(
            "no sample `{series}` in the metrics text; nearest series:\n{}",
            near(text, series)
        );
    };
    value
}

/// The value of `series` in `text`, 0 when no sample has it. Only where absent means
/// zero (see the module doc).
pub fn value_or_zero(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or(0.0)
}

/// The samples of `text` whose name (labels aside) is `name`.
pub fn samples_named<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    samples(text)
        .filter(|(series, _)| name_of(series) == name)
        .collect()
}

/// Every sample line of `text` as (series, value); comments and `# EOF` skipped. A line
/// that is neither fails the test.
fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let value = line
                .rsplit_once(' ')
                .and_then(|(series, value)| value.parse().ok().map(|value| (series, value)));
            value.unwrap_or_else(|| panic!("not a sample line: {line:?}"))
        })
}

/// A series' metric name, without its labels.
fn name_of(series: &str) -> &str {
    series.split_once('{').map_or(series, |(name, _)| name)
}

/// The samples nearest to `series`, one per line: those of the same metric name, or,
/// when there are none, those closest by edit distance.
fn near(text: &str, series: &str) -> String {
    let name = name_of(series);
    let mut candidates: Vec<(usize, &str, f64)> = samples(text)
        .map(|(sample, value)| {
            let distance = if name_of(sample) == name {
                0
            } else {
                strsim::levenshtein(sample, series)
            };
            (distance, sample, value)
        })
        .collect();
    if candidates.is_empty() {
        return "  (the text has no samples)".to_string();
    }
    candidates.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
    candidates
        .iter()
        .take(CANDIDATES)
        .map(|(_, sample, value)| format!("  {sample} {value}"))
        .collect::<Vec<_>>()
        .join("\n")
}
