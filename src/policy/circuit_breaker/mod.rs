//! Circuit breakers: stop sending calls where they keep failing, and try again later.
//!
//! Two breakers share one state machine (`state.rs`): closed, open for a while (longer
//! after each failed probe), half-open letting a few probes through.
//!
//! - The **service breaker** ([`ServiceBreakerLayer`]) sits between retry and the
//!   balancer. While open it answers [`ProxyError::BreakerOpen`](crate::core::error::ProxyError::BreakerOpen) at once, without calling
//!   the service below, so retries stop early and fallback can degrade.
//! - **Endpoint breakers** ([`EndpointBreakers`]) watch each endpoint's attempts as an
//!   [`EndpointObserver`](crate::upstream::EndpointObserver) and hold an endpoint out of
//!   balancing (`readiness.breaker_open`) while its breaker is open: the balancer skips
//!   it instead of failing the call.
//!
//! A breaker trips on `consecutive_failures` failures in a row, or on a failure rate at or
//! above a threshold over a rolling window (`window.rs`) once the window holds
//! `min_requests` calls, whichever comes first. What counts as a failure is
//! `failure_on`, the shared classification of [`outcome`](crate::policy::outcome).

mod endpoint;
mod metrics;
mod service;
mod state;
mod window;

use std::net::SocketAddr;
use std::time::Duration;

pub use endpoint::EndpointBreakers;
pub use metrics::BreakerMetrics;
pub use service::{ResponseFuture, ServiceBreaker, ServiceBreakerHandle, ServiceBreakerLayer};
pub use state::BreakerState;

use crate::core::outcome::Conditions;
use state::Transition;

/// The longest a breaker may stay open: longer than this is a typo, not a policy.
const MAX_OPEN_FOR_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// When a breaker trips, how long it stays open, and how it probes. Valid by
/// construction ([`BreakerConfig::try_new`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Trip after this many failures in a row (at least 1).
    consecutive_failures: Option<u32>,
    /// Trip when the failure rate over a rolling window reaches a threshold.
    failure_rate: Option<FailureRate>,
    /// How long the first trip keeps the breaker open (non-zero).
    open_for: Duration,
    /// The cap of the open duration, which doubles on every failed probe (≥ `open_for`).
    max_open_for: Duration,
    /// Probes that must all succeed to close a half-open breaker (at least 1).
    half_open_requests: u32,
    /// What counts as a failure.
    failure_on: Conditions,
}

/// The failure-rate trip condition. Valid by construction ([`FailureRate::try_new`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRate {
    /// Trip at or above this fraction of failed calls, in (0, 1].
    threshold: f64,
    /// Fewer calls than this in the window never trip the breaker (at least 1).
    min_requests: u32,
    /// How far back the rolling window looks (non-zero).
    window: Duration,
}

/// What is wrong with a breaker configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerConfigError {
    /// Neither trip condition is set.
    #[error("a circuit breaker needs consecutive_failures or failure_rate to trip on")]
    NoTripCondition,
    /// `consecutive_failures: 0`.
    #[error("consecutive_failures must be at least 1")]
    ZeroConsecutiveFailures,
    /// The failure-rate threshold is outside (0, 1].
    #[error("failure_rate threshold must be greater than 0 and at most 1, got {0}")]
    ThresholdOutOfRange(String),
    /// `min_requests: 0`.
    #[error("failure_rate min_requests must be at least 1")]
    ZeroMinRequests,
    /// A zero window.
    #[error("failure_rate window must be non-zero")]
    ZeroWindow,
    /// A zero open duration.
    #[error("open_for must be non-zero")]
    ZeroOpenFor,
    /// `max_open_for < open_for`.
    #[error("max_open_for ({max:?}) must be at least open_for ({min:?})")]
    MaxBelowOpenFor {
        /// `open_for`.
        min: Duration,
        /// `max_open_for`.
        max: Duration,
    },
    /// `max_open_for` beyond a day.
    #[error("max_open_for must be at most {MAX_OPEN_FOR_LIMIT:?}, got {0:?}")]
    MaxOpenForTooLong(Duration),
    /// `half_open_requests: 0`.
    #[error("half_open_requests must be at least 1")]
    ZeroHalfOpenRequests,
    /// `failure_on` names nothing, so the breaker could never trip on an upstream.
    #[error("failure_on must name at least one kind of failure")]
    NoFailureConditions,
}

impl FailureRate {
    /// A failure-rate trip condition: at least `min_requests` calls within `window`, of
    /// which a `threshold` fraction or more failed.
    pub fn try_new(
        threshold: f64,
        min_requests: u32,
        window: Duration,
    ) -> Result<Self, BreakerConfigError> {
        // Written so that NaN fails too.
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(BreakerConfigError::ThresholdOutOfRange(
                threshold.to_string(),
            ));
        }
        if min_requests == 0 {
            return Err(BreakerConfigError::ZeroMinRequests);
        }
        if window.is_zero() {
            return Err(BreakerConfigError::ZeroWindow);
        }
        Ok(Self {
            threshold,
            min_requests,
            window,
        })
    }

    /// The fraction of failed calls that trips the breaker.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// The fewest calls in the window that can trip the breaker.
    pub fn min_requests(&self) -> u32 {
        self.min_requests
    }

    /// How far back the window looks.
    pub fn window(&self) -> Duration {
        self.window
    }
}

impl BreakerConfig {
    /// A breaker configuration, rejecting one that could never trip, never close, or
    /// whose durations make no sense.
    pub fn try_new(
        consecutive_failures: Option<u32>,
        failure_rate: Option<FailureRate>,
        open_for: Duration,
        max_open_for: Duration,
        half_open_requests: u32,
        failure_on: Conditions,
    ) -> Result<Self, BreakerConfigError> {
        if consecutive_failures.is_none() && failure_rate.is_none() {
            return Err(BreakerConfigError::NoTripCondition);
        }
        if consecutive_failures == Some(0) {
            return Err(BreakerConfigError::ZeroConsecutiveFailures);
        }
        if open_for.is_zero() {
            return Err(BreakerConfigError::ZeroOpenFor);
        }
        if max_open_for < open_for {
            return Err(BreakerConfigError::MaxBelowOpenFor {
                min: open_for,
                max: max_open_for,
            });
        }
        if max_open_for > MAX_OPEN_FOR_LIMIT {
            return Err(BreakerConfigError::MaxOpenForTooLong(max_open_for));
        }
        if half_open_requests == 0 {
            return Err(BreakerConfigError::ZeroHalfOpenRequests);
        }
        if failure_on == Conditions::default() {
            return Err(BreakerConfigError::NoFailureConditions);
        }
        Ok(Self {
            consecutive_failures,
            failure_rate,
            open_for,
            max_open_for,
            half_open_requests,
            failure_on,
        })
    }

    /// Failures in a row that trip the breaker, if that condition is set.
    pub fn consecutive_failures(&self) -> Option<u32> {
        self.consecutive_failures
    }

    /// The failure-rate trip condition, if set.
    pub fn failure_rate(&self) -> Option<&FailureRate> {
        self.failure_rate.as_ref()
    }

    /// How long the first trip keeps the breaker open.
    pub fn open_for(&self) -> Duration {
        self.open_for
    }

    /// The cap of the doubling open duration.
    pub fn max_open_for(&self) -> Duration {
        self.max_open_for
    }

    /// Probes that must all succeed to close a half-open breaker.
    pub fn half_open_requests(&self) -> u32 {
        self.half_open_requests
    }

    /// What counts as a failure.
    pub fn failure_on(&self) -> &Conditions {
        &self.failure_on
    }
}

/// One breaker as the admin `/breakers` page shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BreakerView {
    /// The service the breaker guards.
    pub service: String,
    /// The endpoint, for an endpoint breaker; `None` for the service breaker.
    pub endpoint: Option<SocketAddr>,
    /// `closed`, `open` or `half-open`.
    pub state: &'static str,
    /// Failures in a row counted while closed (kept while open, for the record).
    pub consecutive_failures: u32,
    /// The failure rate over the rolling window, when a failure rate is configured and
    /// the window holds calls.
    pub failure_rate: Option<f64>,
    /// The duration of the current open period (it doubles on failed probes); `None`
    /// while closed.
    #[serde(with = "humantime_serde")]
    pub opened_for: Option<Duration>,
}

/// Logs a transition once: opening is a warning, recovering is news. Called after the
/// breaker's lock is released (metrics are recorded under it, to stay in order).
fn log_transition(service: &str, endpoint: Option<SocketAddr>, transition: &Transition) {
    let endpoint = endpoint.map(tracing::field::display);
    let from = transition.from.as_str();
    match transition.to {
        BreakerState::Open => tracing::warn!(
            service,
            endpoint,
            from,
            open_for = ?transition.open_for,
            "circuit breaker opened"
        ),
        BreakerState::HalfOpen => {
            tracing::info!(
                service,
                endpoint,
                from,
                "circuit breaker half-open: probing"
            )
        }
        BreakerState::Closed => tracing::info!(service, endpoint, from, "circuit breaker closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway() -> Conditions {
        Conditions {
            gateway_error: true,
            ..Default::default()
        }
    }

    fn config(
        consecutive: Option<u32>,
        rate: Option<FailureRate>,
        open_for: u64,
        max_open_for: u64,
        half_open: u32,
        failure_on: Conditions,
    ) -> Result<BreakerConfig, BreakerConfigError> {
        BreakerConfig::try_new(
            consecutive,
            rate,
            Duration::from_secs(open_for),
            Duration::from_secs(max_open_for),
            half_open,
            failure_on,
        )
    }

    #[test]
    fn rejects_configs_that_make_no_sense() {
        use BreakerConfigError::*;
        let rate = FailureRate::try_new(0.5, 10, Duration::from_secs(10)).unwrap();
        assert_eq!(config(None, None, 1, 1, 1, gateway()), Err(NoTripCondition));
        assert_eq!(
            config(Some(0), None, 1, 1, 1, gateway()),
            Err(ZeroConsecutiveFailures)
        );
        assert_eq!(config(Some(1), None, 0, 1, 1, gateway()), Err(ZeroOpenFor));
        assert!(matches!(
            config(Some(1), None, 2, 1, 1, gateway()),
            Err(MaxBelowOpenFor { .. })
        ));
        assert!(matches!(
            config(Some(1), None, 1, 100_000, 1, gateway()),
            Err(MaxOpenForTooLong(_))
        ));
        assert_eq!(
            config(None, Some(rate), 1, 1, 0, gateway()),
            Err(ZeroHalfOpenRequests)
        );
        assert_eq!(
            config(Some(1), None, 1, 1, 1, Conditions::default()),
            Err(NoFailureConditions)
        );
        assert!(config(None, Some(rate), 1, 1, 1, gateway()).is_ok());
    }

    #[test]
    fn rejects_failure_rates_that_make_no_sense() {
        use BreakerConfigError::*;
        let window = Duration::from_secs(1);
        for threshold in [0.0, -0.1, 1.01, f64::NAN] {
            assert!(matches!(
                FailureRate::try_new(threshold, 1, window),
                Err(ThresholdOutOfRange(_))
            ));
        }
        assert_eq!(FailureRate::try_new(1.0, 0, window), Err(ZeroMinRequests));
        assert_eq!(
            FailureRate::try_new(1.0, 1, Duration::ZERO),
            Err(ZeroWindow)
        );
        let message = config(Some(1), None, 5, 1, 1, gateway())
            .unwrap_err()
            .to_string();
        assert_eq!(message, "max_open_for (1s) must be at least open_for (5s)");
    }

    #[test]
    fn view_serializes_durations_for_people() {
        let view = BreakerView {
            service: "users".into(),
            endpoint: Some(SocketAddr::from(([10, 0, 0, 7], 8080))),
            state: "open",
            consecutive_failures: 5,
            failure_rate: None,
            opened_for: Some(Duration::from_secs(10)),
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["endpoint"], "10.0.0.7:8080");
        assert_eq!(json["opened_for"], "10s");
        assert_eq!(json["state"], "open");
    }
}
