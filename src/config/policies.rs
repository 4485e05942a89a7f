//! The YAML schema of resilience policies: named policies under `policies:` that
//! services, routes and the inbound side reference by name.
//!
//! The shape follows Dapr's resiliency spec with Envoy's vocabulary. Values that have a
//! natural text form are written as text: durations `250ms`, rates `10/s`, percentages
//! `50%`, failure conditions `connect-failure`, `503`, `unavailable`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Named policies, referenced from services, routes and `inbound`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesConfig {
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
    /// What is retried: `connect-failure`, `reset`, `timeout`, `gateway-error`
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
}

/// A fallback: what to answer instead of failing, and when.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackPolicy {
    /// Triggers: `breaker_open`, `timeout`, `rate_limited`, `no_endpoint`, `overloaded`,
    /// `connect_failure`, `upstream_5xx`, `upstream_reset`, `grpc:<code>`.
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

/// A path prefix or gRPC method with its own policies.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's `route` label in metrics; by default its match text.
    #[serde(default)]
    pub name: Option<String>,
    /// Which requests the route takes.
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// Overrides of the service's policies (each omitted one is the service's).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retry policy name, or `none`.
    #[serde(default)]
    pub retry: Option<String>,
    /// Rate limit name, or `none`.
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// Fallback name, or `none`.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Fault name, or `none`.
    #[serde(default)]
    pub fault: Option<String>,
}

impl RouteConfig {
    /// The route's metrics label: its `name`, else what it matches as written (the path
    /// prefix, `package.Service/Method` or `package.Service`).
    pub fn label(&self) -> &str {
        if let Some(name) = &self.name {
            return name;
        }
        let matches = &self.matches;
        matches
            .path_prefix
            .as_deref()
            .or(matches.grpc_method.as_deref())
            .or(matches.grpc_service.as_deref())
            .unwrap_or_default()
    }
}

/// What a route matches: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Requests whose path starts with this segment prefix.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// gRPC calls of this method: `package.Service/Method`.
    #[serde(default)]
    pub grpc_method: Option<String>,
    /// gRPC calls of any method of this service: `package.Service`.
    #[serde(default)]
    pub grpc_service: Option<String>,
}

/// Trace export and propagation.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    /// The OTLP collector (`http://127.0.0.1:4317` for gRPC, `http://127.0.0.1:4318` for
    /// HTTP). Without it, trace context is still propagated but no span is exported.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `grpc` or `http` (HTTP/protobuf).
    #[serde(default)]
    pub protocol: OtlpProtocolName,
    /// Share of new traces recorded; a caller's sampling decision is followed.
    #[serde(default = "default_sampling")]
    pub sampling: Percent,
    /// Formats written toward upstreams besides W3C: `b3`, `jaeger` (for older apps).
    /// Every format is read from callers.
    #[serde(default)]
    pub propagate: Vec<PropagationName>,
    /// Finished spans queued for export at most; beyond it spans are dropped and counted.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Spans per export call at most.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a partial batch waits.
    #[serde(default = "default_batch_delay", with = "super::scalar::duration")]
    pub batch_delay: Duration,
    /// How long one export may take.
    #[serde(default = "default_export_timeout", with = "super::scalar::duration")]
    pub export_timeout: Duration,
    /// One `remora::access` log line per request.
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// Which tries of a call get their own span: `retries` (the tries of retried calls
    /// only) or `always`.
    #[serde(default)]
    pub attempt_spans: AttemptSpansName,
}

/// Which tries of a call get their own span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptSpansName {
    /// The tries of retried calls only.
    #[default]
    Retries,
    /// Every try.
    Always,
}

impl Default for TracingSection {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtlpProtocolName::default(),
            sampling: default_sampling(),
            propagate: Vec::new(),
            queue_size: default_queue_size(),
            batch_size: default_batch_size(),
            batch_delay: default_batch_delay(),
            export_timeout: default_export_timeout(),
            access_log: true,
            attempt_spans: AttemptSpansName::default(),
        }
    }
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocolName {
    /// OTLP/gRPC.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

/// A trace-context format written toward upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PropagationName {
    /// W3C tracecontext (always written).
    W3c,
    /// Zipkin B3 (multi-header).
    B3,
    /// Jaeger `uber-trace-id`.
    Jaeger,
}

fn default_sampling() -> Percent {
    Percent(1.0)
}
fn default_queue_size() -> usize {
    2048
}
fn default_batch_size() -> usize {
    512
}
fn default_batch_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_true() -> bool {
    true
}

/// A percentage, written `50%` (or a fraction `0.5`); stored as a fraction in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PercentVisitor;
        impl Visitor<'_> for PercentVisitor {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage like `50%`, or a fraction from 0 to 1")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Percent, E> {
                parse_percent(text).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Percent, E> {
                fraction(value).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Percent, E> {
                fraction(value as f64).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Percent, E> {
                fraction(value as f64).map_err(E::custom)
            }
        }
        d.deserialize_any(PercentVisitor)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}%", self.0 * 100.0))
    }
}

fn fraction(value: f64) -> Result<Percent, String> {
    if (0.0..=1.0).contains(&value) {
        Ok(Percent(value))
    } else {
        Err(format!(
            "invalid fraction {value}: write a percentage like `50%`, or a fraction from 0 to 1"
        ))
    }
}

/// Parses `50%`, `2.5%` or a fraction `0.5`.
pub(crate) fn parse_percent(text: &str) -> Result<Percent, String> {
    let text = text.trim();
    match text.strip_suffix('%') {
        Some(number) => match number.trim().parse::<f64>() {
            Ok(value) if (0.0..=100.0).contains(&value) => Ok(Percent(value / 100.0)),
            _ => Err(format!("invalid percentage {text:?}: expected 0% to 100%")),
        },
        None => text
            .parse::<f64>()
            .map_err(|_| format!("invalid percentage {text:?}: write it like `50%`"))
            .and_then(fraction),
    }
}

/// A rate: `count` calls per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Calls.
    pub count: u32,
    /// Per this long.
    pub per: Duration,
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_rate(&text).map_err(de::Error::custom)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let per = match self.per.as_secs() {
            1 if self.per.subsec_nanos() == 0 => "s".to_string(),
            60 if self.per.subsec_nanos() == 0 => "m".to_string(),
            3600 if self.per.subsec_nanos() == 0 => "h".to_string(),
            _ => humantime::format_duration(self.per).to_string(),
        };
        s.collect_str(&format_args!("{}/{per}", self.count))
    }
}

/// Parses `10/s`, `600/m`, `1000/h`, `5/100ms`.
pub(crate) fn parse_rate(text: &str) -> Result<Rate, String> {
    let bad = || {
        format!("invalid rate {text:?}: expected calls per period, e.g. `10/s`, `600/m`, `5/100ms`")
    };
    let (count, per) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let per = match per.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        other => humantime::parse_duration(other).map_err(|_| bad())?,
    };
    if count == 0 || per.is_zero() {
        return Err(format!(
            "invalid rate {text:?}: both the count and the period must be above zero"
        ));
    }
    Ok(Rate { count, per })
}

/// What a rate limit keys on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RateLimitKeyName {
    /// One bucket for all callers.
    #[default]
    Global,
    /// One bucket per client IP.
    ClientIp,
    /// One bucket per value of this header.
    Header(String),
}

impl<'de> Deserialize<'de> for RateLimitKeyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "global" => Ok(Self::Global),
            "client_ip" => Ok(Self::ClientIp),
            other => match other.strip_prefix("header:") {
                Some(name) if http::HeaderName::from_bytes(name.trim().as_bytes()).is_ok() => {
                    Ok(Self::Header(name.trim().to_ascii_lowercase()))
                }
                _ => Err(de::Error::custom(format!(
                    "invalid rate limit key {text:?}: expected `global`, `client_ip` or `header:<name>`"
                ))),
            },
        }
    }
}

impl Serialize for RateLimitKeyName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Global => s.serialize_str("global"),
            Self::ClientIp => s.serialize_str("client_ip"),
            Self::Header(name) => s.collect_str(&format_args!("header:{name}")),
        }
    }
}

/// A gRPC status code by name: `unavailable`, `deadline_exceeded` (or `deadline-exceeded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCodeName(pub tonic::Code);

const GRPC_CODES: [(&str, tonic::Code); 17] = [
    ("ok", tonic::Code::Ok),
    ("cancelled", tonic::Code::Cancelled),
    ("unknown", tonic::Code::Unknown),
    ("invalid_argument", tonic::Code::InvalidArgument),
    ("deadline_exceeded", tonic::Code::DeadlineExceeded),
    ("not_found", tonic::Code::NotFound),
    ("already_exists", tonic::Code::AlreadyExists),
    ("permission_denied", tonic::Code::PermissionDenied),
    ("resource_exhausted", tonic::Code::ResourceExhausted),
    ("failed_precondition", tonic::Code::FailedPrecondition),
    ("aborted", tonic::Code::Aborted),
    ("out_of_range", tonic::Code::OutOfRange),
    ("unimplemented", tonic::Code::Unimplemented),
    ("internal", tonic::Code::Internal),
    ("unavailable", tonic::Code::Unavailable),
    ("data_loss", tonic::Code::DataLoss),
    ("unauthenticated", tonic::Code::Unauthenticated),
];

/// The gRPC code named `text` (`_` and `-` alike, case-insensitive).
pub(crate) fn grpc_code(text: &str) -> Option<tonic::Code> {
    let wanted = text.trim().to_ascii_lowercase().replace('-', "_");
    GRPC_CODES
        .iter()
        .find(|(name, _)| *name == wanted)
        .map(|(_, code)| *code)
}

fn grpc_code_name(code: tonic::Code) -> &'static str {
    GRPC_CODES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("unknown", |(name, _)| name)
}

impl<'de> Deserialize<'de> for GrpcCodeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        grpc_code(&text).map(GrpcCodeName).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown gRPC status {text:?}: expected a name like `unavailable`"
            ))
        })
    }
}

impl Serialize for GrpcCodeName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(grpc_code_name(self.0))
    }
}

/// A failure condition of `retry_on` / `failure_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The TCP connection failed.
    ConnectFailure,
    /// The upstream reset the exchange.
    Reset,
    /// The call or try timed out.
    Timeout,
    /// 502, 503 or 504.
    GatewayError,
    /// Any 5xx.
    ServerError,
    /// This HTTP status.
    Status(u16),
    /// This gRPC status code.
    Grpc(tonic::Code),
}

impl Condition {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let condition = match text {
            "connect-failure" | "connect_failure" => Self::ConnectFailure,
            "reset" => Self::Reset,
            "timeout" => Self::Timeout,
            "gateway-error" | "gateway_error" => Self::GatewayError,
            "5xx" => Self::ServerError,
            _ => {
                if let Ok(status) = text.parse::<u16>() {
                    return Self::status(status);
                }
                match grpc_code(text) {
                    Some(code) => Self::Grpc(code),
                    None => {
                        return Err(format!(
                            "unknown condition {text:?}: expected `connect-failure`, `reset`, `timeout`, \
                             `gateway-error`, `5xx`, an HTTP status like `503`, or a gRPC code like `unavailable`"
                        ))
                    }
                }
            }
        };
        Ok(condition)
    }

    fn status(status: u16) -> Result<Self, String> {
        if (100..=599).contains(&status) {
            Ok(Self::Status(status))
        } else {
            Err(format!("invalid HTTP status {status}: expected 100 to 599"))
        }
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ConditionVisitor;
        impl Visitor<'_> for ConditionVisitor {
            type Value = Condition;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a condition such as `connect-failure`, `5xx`, `503` or `unavailable`")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Condition, E> {
                Condition::parse(text).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Condition, E> {
                Condition::status(u16::try_from(value).unwrap_or(0)).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Condition, E> {
                Condition::status(u16::try_from(value).unwrap_or(0)).map_err(E::custom)
            }
        }
        d.deserialize_any(ConditionVisitor)
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::ConnectFailure => s.serialize_str("connect-failure"),
            Self::Reset => s.serialize_str("reset"),
            Self::Timeout => s.serialize_str("timeout"),
            Self::GatewayError => s.serialize_str("gateway-error"),
            Self::ServerError => s.serialize_str("5xx"),
            Self::Status(status) => s.serialize_u16(*status),
            Self::Grpc(code) => s.serialize_str(grpc_code_name(*code)),
        }
    }
}

/// A fallback trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackTrigger {
    /// The service's breaker is open.
    BreakerOpen,
    /// The call timed out.
    Timeout,
    /// A rate limit refused the call.
    RateLimited,
    /// No endpoint could take the call.
    NoEndpoint,
    /// The concurrency cap shed the call.
    Overloaded,
    /// The connection to the endpoint failed.
    ConnectFailure,
    /// The upstream answered 5xx.
    Upstream5xx,
    /// The upstream reset the exchange.
    UpstreamReset,
    /// The upstream answered this gRPC status.
    Grpc(tonic::Code),
}

const TRIGGERS: [(&str, FallbackTrigger); 8] = [
    ("breaker_open", FallbackTrigger::BreakerOpen),
    ("timeout", FallbackTrigger::Timeout),
    ("rate_limited", FallbackTrigger::RateLimited),
    ("no_endpoint", FallbackTrigger::NoEndpoint),
    ("overloaded", FallbackTrigger::Overloaded),
    ("connect_failure", FallbackTrigger::ConnectFailure),
    ("upstream_5xx", FallbackTrigger::Upstream5xx),
    ("upstream_reset", FallbackTrigger::UpstreamReset),
];

impl<'de> Deserialize<'de> for FallbackTrigger {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let wanted = text.trim().replace('-', "_");
        if let Some((_, trigger)) = TRIGGERS.iter().find(|(name, _)| *name == wanted) {
            return Ok(*trigger);
        }
        if let Some(code) = wanted.strip_prefix("grpc:").and_then(grpc_code) {
            return Ok(Self::Grpc(code));
        }
        let names: Vec<&str> = TRIGGERS.iter().map(|(name, _)| *name).collect();
        Err(de::Error::custom(format!(
            "unknown fallback trigger {text:?}: expected one of {}, or `grpc:<code>`",
            names.join(", ")
        )))
    }
}

impl Serialize for FallbackTrigger {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Grpc(code) => s.collect_str(&format_args!("grpc:{}", grpc_code_name(*code))),
            other => {
                let name = TRIGGERS
                    .iter()
                    .find(|(_, t)| t == other)
                    .map_or("unknown", |(name, _)| name);
                s.serialize_str(name)
            }
        }
    }
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
        Condition::Timeout,
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
