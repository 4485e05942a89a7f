//! The YAML schema of resilience policies: named policies under `policies:` that
//! services, routes and the inbound side reference by name.
//!
//! The shape follows Dapr's resiliency spec with Envoy's vocabulary. Values that have a
//! natural text form are written as text: durations `250ms`, rates `10/s`, percentages
//! `50%`, failure conditions `connect_failure`, `503`, `unavailable`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;

/// Named policies, referenced from services, routes and `inbound`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesSection {
    /// Overall time limits: `fast: 300ms`.
    #[serde(default)]
    pub timeouts: BTreeMap<String, TimeoutPolicy>,
    /// Retry policies.
    #[serde(default)]
    pub retries: BTreeMap<String, RetryPolicy>,
    /// Circuit breakers.
    #[serde(default)]
    pub breakers: BTreeMap<String, BreakerPolicy>,
    /// Rate limits.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitPolicy>,
    /// Fallbacks: what to answer instead of failing.
    #[serde(default)]
    pub fallbacks: BTreeMap<String, FallbackPolicy>,
    /// Injected faults, to rehearse failure.
    #[serde(default)]
    pub faults: BTreeMap<String, FaultPolicy>,
}

/// A named overall timeout: the bound of one call, all retries included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct TimeoutPolicy(#[serde(with = "super::scalar::duration")] pub Duration);

/// A retry policy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (3 = the call and up to two retries).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// What is retried: `connect_failure`, `reset`, `try_timeout`, `gateway_error`
    /// (502/503/504), `5xx`, an HTTP status (`503`), a gRPC code (`unavailable`).
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<Condition>,
    /// Time limit of each attempt; a try that exceeds it counts as `timeout`.
    #[serde(default, with = "super::scalar::opt_duration")]
    pub per_try_timeout: Option<Duration>,
    /// Exponential backoff between attempts.
    #[serde(default)]
    pub backoff: BackoffPolicy,
    /// Retries allowed beyond the calls themselves, so retries cannot multiply an outage.
    #[serde(default)]
    pub budget: BudgetPolicy,
    /// Retry methods that are not idempotent (POST, PATCH) too.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Largest request body kept to replay; larger bodies are sent once, never retried.
    #[serde(default = "default_max_replay_bytes")]
    pub max_replay_bytes: usize,
}

/// Backoff between retries.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffPolicy {
    /// Delay before the first retry; doubles each retry.
    #[serde(default = "default_backoff_base", with = "super::scalar::duration")]
    pub base: Duration,
    /// Longest delay.
    #[serde(default = "default_backoff_max", with = "super::scalar::duration")]
    pub max: Duration,
    /// Random share of each delay, from `0%` (exact) to `100%`.
    #[serde(default = "default_jitter")]
    pub jitter: Percent,
}

/// The retry budget.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetPolicy {
    /// Retries allowed as a share of recent calls.
    #[serde(default = "default_budget_ratio")]
    pub ratio: Percent,
    /// Retries per second always allowed, however few the calls.
    #[serde(default = "default_budget_floor")]
    pub min_per_second: u32,
    /// How far back "recent" reaches.
    #[serde(default = "default_budget_window", with = "super::scalar::duration")]
    pub window: Duration,
}

/// A circuit breaker.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Trip after this many failures in a row.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// Trip when the failure rate over a rolling window reaches a threshold.
    #[serde(default)]
    pub failure_rate: Option<FailureRatePolicy>,
    /// How long the breaker stays open the first time; doubles on each reopening.
    #[serde(default = "default_open_for", with = "super::scalar::duration")]
    pub open_for: Duration,
    /// Longest open time.
    #[serde(default = "default_max_open_for", with = "super::scalar::duration")]
    pub max_open_for: Duration,
    /// Probe calls let through while half-open.
    #[serde(default = "default_half_open_requests")]
    pub half_open_requests: u32,
    /// What counts as a failure (same words as `retry_on`).
    #[serde(default = "default_failure_on")]
    pub failure_on: Vec<Condition>,
}

/// The failure-rate trip condition.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRatePolicy {
    /// Share of failed calls that trips the breaker.
    pub threshold: Percent,
    /// Calls needed in the window before the rate counts.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// The rolling window.
    #[serde(default = "default_rate_window", with = "super::scalar::duration")]
    pub window: Duration,
}

/// A rate limit (token bucket).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// Sustained rate: `10/s`, `600/m`, `5/100ms`.
    pub rate: Rate,
    /// Calls allowed at once above the rate (the bucket size); default: one second's worth.
    #[serde(default)]
    pub burst: Option<u32>,
    /// What is limited separately: `global`, `client_ip`, or `header:<name>`.
    #[serde(default)]
    pub key: RateLimitKeyName,
    /// Share the budget among every replica through Redis; without it each replica
    /// counts alone.
    #[serde(default)]
    pub shared: Option<SharedRateLimitPolicy>,
}

/// Where a shared rate limit keeps its buckets, and what it does when Redis fails.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SharedRateLimitPolicy {
    /// The Redis holding the buckets: `redis://host:6379` (`rediss://` for TLS).
    pub redis: String,
    /// The most one decision may wait on Redis before `on_error` decides instead.
    #[serde(default = "default_shared_timeout", with = "super::scalar::duration")]
    pub timeout: Duration,
    /// When Redis fails or is late: `open` (admit), `closed` (refuse) or `local`
    /// (this replica's own limit at the same rate).
    #[serde(default)]
    pub on_error: SharedOnError,
    /// Tokens taken from Redis per round trip and spent locally; default: 1% of a
    /// second's budget, between 1 and 10.
    #[serde(default)]
    pub batch: Option<u32>,
}

/// What a shared rate limit does without Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedOnError {
    /// Admit every call.
    Open,
    /// Refuse every call.
    Closed,
    /// Count on this replica alone, at the limit's rate.
    #[default]
    Local,
}

/// A fallback: what to answer instead of failing, and when.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackPolicy {
    /// Triggers: `breaker_open`, `timeout`, `rate_limited`, `no_endpoint`, `overloaded`,
    /// `connect_failure`, `5xx`, `reset`, a gRPC code.
    pub on: Vec<FallbackTrigger>,
    /// A fixed answer.
    #[serde(default)]
    pub respond: Option<StaticResponsePolicy>,
    /// Send the call to this (degraded) service instead.
    #[serde(default)]
    pub forward_to: Option<String>,
    /// For GET: the last good response, if fresh enough.
    #[serde(default)]
    pub stale: Option<StalePolicy>,
}

/// A fixed fallback answer.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticResponsePolicy {
    /// HTTP status for HTTP callers.
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response body.
    #[serde(default)]
    pub body: String,
    /// For gRPC callers: the status code to answer with (`ok`, `unavailable`, ...).
    #[serde(default)]
    pub grpc_status: Option<GrpcCodeName>,
    /// For gRPC callers: the status message.
    #[serde(default)]
    pub grpc_message: Option<String>,
    /// For gRPC callers: a protobuf reply message, base64, answered with status OK.
    #[serde(default)]
    pub grpc_reply_base64: Option<String>,
}

/// The stale-if-error cache.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StalePolicy {
    /// Oldest response served.
    #[serde(default = "default_stale_age", with = "super::scalar::duration")]
    pub max_age: Duration,
    /// Responses kept.
    #[serde(default = "default_stale_entries")]
    pub max_entries: usize,
    /// Largest body kept.
    #[serde(default = "default_max_replay_bytes")]
    pub max_body_bytes: usize,
}

/// Injected faults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPolicy {
    /// Delay a share of calls.
    #[serde(default)]
    pub delay: Option<DelayFaultPolicy>,
    /// Fail a share of calls with a status.
    #[serde(default)]
    pub abort: Option<AbortFaultPolicy>,
}

/// Delay fault.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DelayFaultPolicy {
    /// Share of calls delayed.
    pub percent: Percent,
    /// How long.
    #[serde(with = "super::scalar::duration")]
    pub duration: Duration,
}

/// Abort fault.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AbortFaultPolicy {
    /// Share of calls aborted.
    pub percent: Percent,
    /// Status answered (gRPC callers get the matching gRPC code).
    #[serde(default = "default_abort_status")]
    pub status: u16,
}

fn default_shared_timeout() -> Duration {
    Duration::from_millis(5)
}
fn default_attempts() -> u32 {
    3
}
fn default_retry_on() -> Vec<Condition> {
    vec![
        Condition::ConnectFailure,
        Condition::Reset,
        Condition::GatewayError,
    ]
}
fn default_max_replay_bytes() -> usize {
    64 * 1024
}
fn default_backoff_base() -> Duration {
    Duration::from_millis(25)
}
fn default_backoff_max() -> Duration {
    Duration::from_millis(250)
}
fn default_jitter() -> Percent {
    Percent(0.5)
}
fn default_budget_ratio() -> Percent {
    Percent(0.2)
}
fn default_budget_floor() -> u32 {
    10
}
fn default_budget_window() -> Duration {
    Duration::from_secs(10)
}
fn default_open_for() -> Duration {
    Duration::from_secs(5)
}
fn default_max_open_for() -> Duration {
    Duration::from_secs(60)
}
fn default_half_open_requests() -> u32 {
    3
}
fn default_failure_on() -> Vec<Condition> {
    vec![
        Condition::ConnectFailure,
        Condition::Reset,
        Condition::TryTimeout,
        Condition::ServerError,
    ]
}
fn default_min_requests() -> u32 {
    20
}
fn default_rate_window() -> Duration {
    Duration::from_secs(10)
}
fn default_fallback_status() -> u16 {
    200
}
fn default_stale_age() -> Duration {
    Duration::from_secs(300)
}
fn default_stale_entries() -> usize {
    1000
}
fn default_abort_status() -> u16 {
    503
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: default_backoff_base(),
            max: default_backoff_max(),
            jitter: default_jitter(),
        }
    }
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_floor(),
            window: default_budget_window(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("50%"), Ok(Percent(0.5)));
        assert_eq!(parse_percent("0.25"), Ok(Percent(0.25)));
        assert!(parse_percent("150%").is_err());
        assert!(parse_percent("half").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(
            parse_rate("10/s"),
            Ok(Rate {
                count: 10,
                per: Duration::from_secs(1)
            })
        );
        assert_eq!(
            parse_rate("5/100ms"),
            Ok(Rate {
                count: 5,
                per: Duration::from_millis(100)
            })
        );
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("ten per second").is_err());
    }

    #[test]
    fn conditions_and_codes() {
        assert_eq!(Condition::parse("5xx"), Ok(Condition::ServerError));
        assert_eq!(Condition::parse("503"), Ok(Condition::Status(503)));
        assert_eq!(
            Condition::parse("deadline-exceeded"),
            Ok(Condition::Grpc(tonic::Code::DeadlineExceeded))
        );
        assert!(Condition::parse("999").is_err());
        assert!(Condition::parse("sometimes").is_err());
        assert_eq!(grpc_code("UNAVAILABLE"), Some(tonic::Code::Unavailable));
    }
}
