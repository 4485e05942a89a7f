//! Reads the frontend sidecar's resilience figures the way an operator's scraper would:
//! a GET of its admin `/metrics`, parsed from the Prometheus text format.
//!
//! Only the series the table shows are kept: retries, fallbacks served, calls refused by
//! a rate limit, timeouts, service-breaker openings (counters, so a figure over a span is
//! the difference of two [`PolicySample`]s) and the service breaker's state (a gauge).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long one scrape may take before the figures are shown as unknown.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

/// A service breaker's state, as `remora_breaker_state` exports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow (gauge 0).
    Closed,
    /// Calls fail fast (gauge 1).
    Open,
    /// A few probe calls test the upstream (gauge 2).
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open`, `half-open`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }

    fn from_gauge(value: f64) -> Option<Self> {
        match value as i64 {
            0 => Some(Self::Closed),
            1 => Some(Self::Open),
            2 => Some(Self::HalfOpen),
            _ => None,
        }
    }
}

/// Counts of one service's resilience events: since the sidecar started in a
/// [`PolicySample`], over a span once two samples are subtracted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    /// Failed attempts that were retried (`remora_retries_total`).
    pub retries: u64,
    /// Fallback answers served, every trigger and action (`remora_fallbacks_total`).
    pub fallbacks: u64,
    /// Calls refused by the rate limit (`remora_rate_limited_total`).
    pub rate_limited: u64,
    /// Calls and attempts that ran out of time (`remora_timeouts_total`, both kinds).
    pub timeouts: u64,
    /// Times the service breaker opened (`remora_breaker_transitions_total{to="open"}`).
    pub breaker_opened: u64,
    /// Times the service breaker let probes through (`...{to="half-open"}`).
    pub breaker_half_opened: u64,
}

impl PolicyCounts {
    /// What happened after `earlier` (counters only grow; a reset counts from zero).
    pub fn since(&self, earlier: &PolicyCounts) -> PolicyCounts {
        PolicyCounts {
            retries: self.retries.saturating_sub(earlier.retries),
            fallbacks: self.fallbacks.saturating_sub(earlier.fallbacks),
            rate_limited: self.rate_limited.saturating_sub(earlier.rate_limited),
            timeouts: self.timeouts.saturating_sub(earlier.timeouts),
            breaker_opened: self.breaker_opened.saturating_sub(earlier.breaker_opened),
            breaker_half_opened: self
                .breaker_half_opened
                .saturating_sub(earlier.breaker_half_opened),
        }
    }
}

/// One service's figures in one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServicePolicy {
    /// Counters since the sidecar started.
    pub counts: PolicyCounts,
    /// The service breaker's state; `None` when the service has no breaker.
    pub breaker: Option<BreakerState>,
}

/// One scrape of the frontend's metrics, by service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySample {
    services: BTreeMap<String, ServicePolicy>,
}

impl PolicySample {
    /// The figures of `service`; all zero when it has none yet.
    pub fn service(&self, service: &str) -> ServicePolicy {
        self.services.get(service).copied().unwrap_or_default()
    }

    /// Picks the resilience series out of a Prometheus text exposition.
    pub fn parse(text: &str) -> PolicySample {
        let mut sample = PolicySample::default();
        for line in text.lines() {
            let Some(series) = Series::parse(line) else {
                continue;
            };
            let Some(service) = series.label("service") else {
                continue;
            };
            let entry = sample.services.entry(service.to_string()).or_default();
            // Counters are integers; the text format may still write them as `12.0`.
            let count = series.value.max(0.0) as u64;
            let service_breaker = series.label("endpoint").is_none_or(str::is_empty);
            match series.name {
                "remora_retries_total" => entry.counts.retries += count,
                "remora_fallbacks_total" => entry.counts.fallbacks += count,
                "remora_rate_limited_total" => entry.counts.rate_limited += count,
                "remora_timeouts_total" => entry.counts.timeouts += count,
                "remora_breaker_transitions_total" if service_breaker => match series.label("to") {
                    Some("open") => entry.counts.breaker_opened += count,
                    Some("half-open") => entry.counts.breaker_half_opened += count,
                    _ => {}
                },
                "remora_breaker_state" if service_breaker => {
                    entry.breaker = BreakerState::from_gauge(series.value);
                }
                _ => {}
            }
        }
        sample
    }
}

/// One sample line: `name{label="value",...} value`.
struct Series<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl<'a> Series<'a> {
    fn parse(line: &'a str) -> Option<Series<'a>> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (head, value) = line.rsplit_once(' ')?;
        let value: f64 = value.trim().parse().ok()?;
        let head = head.trim();
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
            None => (head, Vec::new()),
        };
        Some(Series {
            name,
            labels,
            value,
        })
    }

    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// `a="x",b="y \"quoted\""` -> pairs, unescaping `\\`, `\"` and `\n`.
fn parse_labels(text: &str) -> Option<Vec<(&str, String)>> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if rest.is_empty() {
            return Some(labels);
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        };
        labels.push((key.trim(), value));
        rest = &after[end + 1..];
    }
}

/// Scrapes one sidecar's admin `/metrics`.
#[derive(Debug, Clone)]
pub struct PolicyProbe {
    client: Client<HttpConnector, Empty<Bytes>>,
    uri: Uri,
}

impl PolicyProbe {
    /// A probe of the admin listener at `admin`.
    pub fn new(admin: SocketAddr) -> Result<Self, http::uri::InvalidUri> {
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            uri: format!("http://{admin}/metrics").parse()?,
        })
    }

    /// The figures now; `None` when the scrape failed or took too long.
    pub async fn sample(&self) -> Option<PolicySample> {
        let scrape = async {
            let mut request = Request::new(Empty::new());
            *request.uri_mut() = self.uri.clone();
            let response = self.client.request(request).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some(PolicySample::parse(&String::from_utf8_lossy(&body)))
        };
        tokio::time::timeout(SCRAPE_TIMEOUT, scrape).await.ok()?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP remora_retries Failed attempts that were retried.
# TYPE remora_retries counter
remora_retries_total{service="catalog"} 12
remora_retries_total{service="inventory"} 3
remora_fallbacks_total{service="catalog",trigger="breaker_open",action="respond"} 40
remora_fallbacks_total{service="catalog",trigger="5xx",action="respond"} 2
remora_rate_limited_total{service="catalog"} 7
remora_timeouts_total{service="catalog",kind="request"} 1
remora_timeouts_total{service="catalog",kind="per_try"} 4
remora_breaker_state{service="catalog",endpoint=""} 1
remora_breaker_state{service="catalog",endpoint="127.0.0.1:9"} 0
remora_breaker_transitions_total{service="catalog",endpoint="",from="closed",to="open"} 1
remora_breaker_transitions_total{service="catalog",endpoint="",from="half-open",to="open"} 2
remora_breaker_transitions_total{service="catalog",endpoint="",from="open",to="half-open"} 2
remora_breaker_transitions_total{service="catalog",endpoint="127.0.0.1:9",from="closed",to="open"} 5
remora_requests_total{direction="outbound",service="odd \"name\"",route="default",status="200",grpc_code=""} 9
# EOF
"#;

    #[test]
    fn picks_the_resilience_series() {
        let sample = PolicySample::parse(EXPOSITION);
        let catalog = sample.service("catalog");
        assert_eq!(
            catalog.counts,
            PolicyCounts {
                retries: 12,
                fallbacks: 42,
                rate_limited: 7,
                timeouts: 5,
                breaker_opened: 3,
                breaker_half_opened: 2,
            }
        );
        assert_eq!(catalog.breaker, Some(BreakerState::Open));
        let inventory = sample.service("inventory");
        assert_eq!(inventory.counts.retries, 3);
        assert_eq!(inventory.breaker, None);
        assert_eq!(sample.service("absent"), ServicePolicy::default());
    }

    #[test]
    fn unescapes_label_values() {
        let series = Series::parse(r#"m{a="x \"y\"",b="z\\"} 1.5"#).expect("a sample line");
        assert_eq!(series.label("a"), Some("x \"y\""));
        assert_eq!(series.label("b"), Some("z\\"));
        assert_eq!(series.value, 1.5);
        assert!(Series::parse("# TYPE m counter").is_none());
        assert!(Series::parse("m{a=\"unterminated} 1").is_none());
    }

    #[test]
    fn spans_are_differences_of_samples() {
        let earlier = PolicyCounts {
            retries: 5,
            fallbacks: 1,
            ..PolicyCounts::default()
        };
        let later = PolicyCounts {
            retries: 9,
            fallbacks: 1,
            rate_limited: 2,
            ..PolicyCounts::default()
        };
        let span = later.since(&earlier);
        assert_eq!((span.retries, span.fallbacks, span.rate_limited), (4, 0, 2));
    }
}
