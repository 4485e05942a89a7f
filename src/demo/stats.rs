//! What the load generator observed, per service: latency histograms, status counts and
//! which instance answered.
//!
//! Workers [`ServiceStats::record`] each call into the current window; once per refresh
//! the demo [`ServiceStats::take_window`]s it (so rates and percentiles are per second)
//! and merges it into its running totals with [`Tally::merge`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::apps::AppKind;

/// The slowest latency a histogram tells apart from "at least this slow".
const HIGHEST_TRACKED: Duration = Duration::from_secs(60);

/// How one call ended, as the caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    /// An HTTP response with this status.
    Http(u16),
    /// A gRPC call that ended with this status.
    Grpc(tonic::Code),
    /// No answer at all: the reason (`timeout`, `connect`, ...).
    Failed(&'static str),
}

impl CallStatus {
    /// Whether the call succeeded (HTTP 2xx, gRPC OK).
    pub fn is_success(self) -> bool {
        match self {
            Self::Http(status) => (200..300).contains(&status),
            Self::Grpc(code) => code == tonic::Code::Ok,
            Self::Failed(_) => false,
        }
    }

    /// The bucket it is counted in: `2xx`..`5xx` for HTTP, the code name for gRPC.
    pub fn bucket(self) -> &'static str {
        match self {
            Self::Http(status) => match status {
                100..=199 => "1xx",
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                500..=599 => "5xx",
                _ => "other",
            },
            Self::Grpc(code) => grpc_code_name(code),
            Self::Failed(reason) => reason,
        }
    }
}

/// The canonical upper-case name of a gRPC status code.
fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One call's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How it ended.
    pub status: CallStatus,
    /// The instance that answered, when the answer names one.
    pub instance: Option<Arc<str>>,
    /// Whether a sidecar's fallback answered instead of the service
    /// (`x-remora-fallback` on the answer).
    pub degraded: bool,
}

impl Outcome {
    /// A call that got no answer, for `reason`.
    pub fn failed(reason: &'static str) -> Self {
        Self {
            status: CallStatus::Failed(reason),
            instance: None,
            degraded: false,
        }
    }
}

/// Counts and latencies over some span of time (one refresh, or the whole run).
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency in microseconds, successes and failures alike.
    pub latency: Histogram<u64>,
    /// Calls per status bucket.
    pub statuses: BTreeMap<&'static str, u64>,
    /// Calls per answering instance.
    pub instances: BTreeMap<Arc<str>, u64>,
    /// Calls a fallback answered (whatever their status).
    pub degraded: u64,
    /// Calls counted (the histogram's count too, until [`Tally::without_latency`]).
    requests: u64,
}

impl Default for Tally {
    fn default() -> Self {
        let highest = u64::try_from(HIGHEST_TRACKED.as_micros()).unwrap_or(u64::MAX);
        Self {
            latency: Histogram::new_with_bounds(1, highest, 3)
                .expect("1µs..60s at 3 significant figures is a valid histogram"),
            statuses: BTreeMap::new(),
            instances: BTreeMap::new(),
            degraded: 0,
            requests: 0,
        }
    }
}

impl Tally {
    /// Calls counted.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// These counts without the latency histogram (about 140 KB at this range and
    /// precision): what a played scene keeps, so that a demo cycling its scenes for
    /// hours holds a few hundred bytes per scene, not a histogram each.
    pub fn without_latency(mut self) -> Self {
        if let Ok(empty) = Histogram::new(1) {
            self.latency = empty;
        }
        self
    }

    /// Calls that succeeded.
    pub fn successes(&self) -> u64 {
        ["2xx", "OK"]
            .iter()
            .filter_map(|bucket| self.statuses.get(bucket))
            .sum()
    }

    /// The latency at `quantile` (`0.0..=1.0`); zero when nothing was counted.
    pub fn latency_at(&self, quantile: f64) -> Duration {
        if self.latency.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.latency.value_at_quantile(quantile))
    }

    /// Counts one call.
    pub fn record(&mut self, latency: Duration, outcome: &Outcome) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(micros.max(1));
        self.requests += 1;
        *self.statuses.entry(outcome.status.bucket()).or_default() += 1;
        if let Some(instance) = &outcome.instance {
            *self.instances.entry(instance.clone()).or_default() += 1;
        }
        if outcome.degraded {
            self.degraded += 1;
        }
    }

    /// Adds `other`'s counts to this one.
    pub fn merge(&mut self, other: &Tally) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        for (bucket, count) in &other.statuses {
            *self.statuses.entry(bucket).or_default() += count;
        }
        for (instance, count) in &other.instances {
            *self.instances.entry(instance.clone()).or_default() += count;
        }
        self.degraded += other.degraded;
        self.requests += other.requests;
    }
}

/// The live statistics of one service, shared by its load workers and the display.
#[derive(Debug)]
pub struct ServiceStats {
    /// The service's name.
    pub name: Arc<str>,
    /// What it speaks.
    pub kind: AppKind,
    /// Calls since the last [`take_window`](Self::take_window).
    window: Mutex<Tally>,
}

impl ServiceStats {
    /// Empty statistics for `name`.
    pub fn new(name: &str, kind: AppKind) -> Self {
        Self {
            name: Arc::from(name),
            kind,
            window: Mutex::new(Tally::default()),
        }
    }

    /// Counts one call.
    pub fn record(&self, latency: Duration, outcome: &Outcome) {
        // NOTE: one mutex per service is fine at the demo's few hundred calls a second;
        // nothing is awaited while it is held.
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.record(latency, outcome);
    }

    /// The calls counted since the previous take; starts a new window.
    pub fn take_window(&self) -> Tally {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: CallStatus, instance: &str) -> Outcome {
        Outcome {
            status,
            instance: Some(Arc::from(instance)),
            degraded: false,
        }
    }

    #[test]
    fn buckets_http_by_class_and_grpc_by_code() {
        assert_eq!(CallStatus::Http(204).bucket(), "2xx");
        assert_eq!(CallStatus::Http(503).bucket(), "5xx");
        assert_eq!(CallStatus::Grpc(tonic::Code::Ok).bucket(), "OK");
        assert_eq!(
            CallStatus::Grpc(tonic::Code::Unavailable).bucket(),
            "UNAVAILABLE"
        );
        assert!(!CallStatus::Failed("timeout").is_success());
    }

    #[test]
    fn windows_merge_into_totals() {
        let stats = ServiceStats::new("catalog", AppKind::Http);
        stats.record(
            Duration::from_millis(1),
            &outcome(CallStatus::Http(200), "a"),
        );
        stats.record(
            Duration::from_millis(9),
            &outcome(CallStatus::Http(500), "b"),
        );
        let window = stats.take_window();
        assert_eq!(window.requests(), 2);
        assert_eq!(window.successes(), 1);
        assert_eq!(stats.take_window().requests(), 0);

        let mut total = Tally::default();
        total.merge(&window);
        total.merge(&window);
        assert_eq!(total.requests(), 4);
        assert_eq!(total.statuses["5xx"], 2);
        assert_eq!(total.instances[&Arc::from("a")], 2);
        assert!(total.latency_at(0.99) >= Duration::from_millis(9));
    }

    /// A played scene keeps its counts and lets its histogram go (a one-hour soak of
    /// the demo grew 2.2 MB a minute holding one per scene and service).
    #[test]
    fn a_tally_without_latency_keeps_its_counts_and_little_memory() {
        let stats = ServiceStats::new("catalog", AppKind::Http);
        for status in [200, 200, 503] {
            stats.record(
                Duration::from_millis(3),
                &outcome(CallStatus::Http(status), "a"),
            );
        }
        let full = stats.take_window();
        let kept = full.clone().without_latency();
        assert_eq!(kept.requests(), 3);
        assert_eq!(kept.successes(), 2);
        assert_eq!(kept.instances[&Arc::from("a")], 3);
        assert!(
            full.latency.distinct_values() > 10_000,
            "{}",
            full.latency.distinct_values()
        );
        assert!(
            kept.latency.distinct_values() < 1_000,
            "{}",
            kept.latency.distinct_values()
        );
    }
}
