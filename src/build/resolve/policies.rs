//! `policies` and the references to them -> each policy layer's own settings.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::config::{
    BreakerPolicy, Condition, FallbackPolicy, FallbackTrigger, FaultPolicy, PoliciesSection,
    RateLimitKeyName, RateLimitPolicy, RetryPolicy, SharedOnError,
};
use crate::core::outcome::Conditions;
use crate::policy::backoff::RetryBackoff;
use crate::policy::budget::RetryBudget;
use crate::policy::circuit_breaker::{BreakerConfig, FailureRate};
use crate::policy::fallback::{
    FallbackAction, FallbackConfig, GrpcReply, StaleCache, StaticResponse, Trigger,
};
use crate::policy::fault::{AbortFault, DelayFault, FaultConfig};
use crate::policy::rate_limit::shared::{OnError, SharedLimitConfig, SharedLimitConfigError};
use crate::policy::rate_limit::{Rate, RateLimitConfig, RateLimitKey};
use crate::policy::retry::RetryConfig;
use crate::policy::timeout::TimeoutConfig;
use crate::policy::ServiceStack;

use super::{At, BuildError};
use crate::policy::circuit_breaker::BreakerConfigError;

/// `none` switches an inherited policy off on a route.
pub const NONE: &str = "none";

/// The failure conditions named in `retry_on` / `failure_on`.
pub fn conditions(list: &[Condition]) -> Conditions {
    let mut conditions = Conditions::default();
    for condition in list {
        match *condition {
            Condition::ConnectFailure => conditions.connect_failure = true,
            Condition::Reset => conditions.reset = true,
            Condition::TryTimeout => conditions.timeout = true,
            Condition::GatewayError => conditions.gateway_error = true,
            Condition::ServerError => conditions.server_error = true,
            Condition::Status(status) => {
                if let Ok(status) = StatusCode::from_u16(status) {
                    conditions.statuses.push(status);
                }
            }
            Condition::Grpc(code) => conditions.grpc_codes.push(code),
        }
    }
    conditions
}

/// A timeout reference: a `policies.timeouts` name, a duration, or `none`.
pub fn timeout(
    policies: &PoliciesSection,
    value: Option<&str>,
) -> Result<TimeoutConfig, BuildError> {
    let request = match value {
        None | Some(NONE) => None,
        Some(text) if text.starts_with(|c: char| c.is_ascii_digit()) => {
            Some(crate::config::parse_duration(text)?)
        }
        Some(name) => Some(
            policies
                .timeouts
                .get(name)
                .ok_or_else(|| format!("unknown timeout `{name}`"))?
                .0,
        ),
    };
    TimeoutConfig::try_new(request).here()
}

/// A retry policy, with its own budget.
pub fn retry(policy: &RetryPolicy) -> Result<RetryConfig, BuildError> {
    let backoff = RetryBackoff::try_new(
        policy.backoff.base,
        policy.backoff.max,
        policy.backoff.jitter.0,
    )
    .at("backoff")?;
    let budget = RetryBudget::try_new(
        policy.budget.ratio.0,
        policy.budget.min_per_second,
        policy.budget.window,
    )
    .at("budget")?;
    let config = RetryConfig::try_new(
        policy.attempts,
        conditions(&policy.retry_on),
        backoff,
        Arc::new(budget),
    )
    .at("attempts")?
    .with_per_try_timeout(policy.per_try_timeout)
    .at("per_try_timeout")?
    .with_max_replay_bytes(policy.max_replay_bytes)
    .at("max_replay_bytes")?;
    Ok(config.with_retry_non_idempotent(policy.retry_non_idempotent))
}

/// A circuit breaker.
pub fn breaker(policy: &BreakerPolicy) -> Result<BreakerConfig, BuildError> {
    let failure_rate = policy
        .failure_rate
        .as_ref()
        .map(|rate| FailureRate::try_new(rate.threshold.0, rate.min_requests, rate.window))
        .transpose()
        .map_err(breaker_error)?;
    BreakerConfig::try_new(
        policy.consecutive_failures,
        failure_rate,
        policy.open_for,
        policy.max_open_for,
        policy.half_open_requests,
        conditions(&policy.failure_on),
    )
    .map_err(breaker_error)
}

/// A breaker's refusal, at the field it is about.
fn breaker_error(error: BreakerConfigError) -> BuildError {
    use BreakerConfigError as E;
    let field = match error {
        E::NoTripCondition => None,
        E::ZeroConsecutiveFailures => Some("consecutive_failures"),
        E::ThresholdOutOfRange(_) => Some("failure_rate.threshold"),
        E::ZeroMinRequests => Some("failure_rate.min_requests"),
        E::ZeroWindow => Some("failure_rate.window"),
        E::ZeroOpenFor => Some("open_for"),
        E::MaxBelowOpenFor { .. } | E::MaxOpenForTooLong(_) => Some("max_open_for"),
        E::ZeroHalfOpenRequests => Some("half_open_requests"),
        E::NoFailureConditions => Some("failure_on"),
    };
    match field {
        Some(dotted) => BuildError::at(super::field(dotted), error),
        None => BuildError::new(error.to_string()),
    }
}

/// A rate limit; the burst defaults to one period's worth of calls.
pub fn rate_limit(policy: &RateLimitPolicy) -> Result<RateLimitConfig, BuildError> {
    let count = NonZeroU32::new(policy.rate.count)
        .ok_or("the rate must be above zero")
        .at("rate")?;
    let burst = NonZeroU32::new(policy.burst.unwrap_or(policy.rate.count))
        .ok_or("burst must be at least 1")
        .at("burst")?;
    let key = match &policy.key {
        RateLimitKeyName::Global => RateLimitKey::Global,
        RateLimitKeyName::ClientIp => RateLimitKey::ClientIp,
        RateLimitKeyName::Header(name) => {
            RateLimitKey::Header(HeaderName::from_bytes(name.as_bytes()).at("key")?)
        }
    };
    let config = RateLimitConfig::try_new(
        Rate {
            count,
            per: policy.rate.per,
        },
        burst,
        key,
    )
    .at("rate")?;
    let Some(shared) = &policy.shared else {
        return Ok(config);
    };
    let on_error = match shared.on_error {
        SharedOnError::Open => OnError::Open,
        SharedOnError::Closed => OnError::Closed,
        SharedOnError::Local => OnError::Local,
    };
    let batch = match shared.batch {
        Some(batch) => Some(
            NonZeroU32::new(batch)
                .ok_or("batch must be at least 1")
                .at("shared.batch")?,
        ),
        None => None,
    };
    let shared = SharedLimitConfig::try_new(&shared.redis, shared.timeout, on_error, batch)
        .map_err(|error| {
            let field = match error {
                SharedLimitConfigError::Url(_) => "shared.redis",
                SharedLimitConfigError::ZeroTimeout | SharedLimitConfigError::TimeoutTooLong(_) => {
                    "shared.timeout"
                }
                SharedLimitConfigError::BatchAboveBurst { .. } => "shared.batch",
            };
            BuildError::at(super::field(field), error)
        })?;
    config.share(shared).at("shared.batch")
}

/// Injected faults.
pub fn fault(policy: &FaultPolicy) -> Result<FaultConfig, BuildError> {
    if policy.delay.is_none() && policy.abort.is_none() {
        return Err(BuildError::new("a fault needs `delay`, `abort` or both"));
    }
    let delay = policy
        .delay
        .as_ref()
        .map(|d| DelayFault::try_new(d.percent.0 * 100.0, d.duration))
        .transpose()
        .at("delay")?;
    let abort = policy
        .abort
        .as_ref()
        .map(|a| {
            let status = StatusCode::from_u16(a.status).at("abort.status")?;
            AbortFault::try_new(a.percent.0 * 100.0, status).at("abort.status")
        })
        .transpose()?;
    Ok(FaultConfig { delay, abort })
}

/// A concurrency cap.
pub fn max_in_flight(value: Option<usize>) -> Option<NonZeroUsize> {
    value.and_then(NonZeroUsize::new)
}

/// A fallback; `alternate` gives the stack of a `forward_to` service.
pub fn fallback(
    policy: &FallbackPolicy,
    alternate: impl Fn(&str) -> Option<ServiceStack>,
) -> Result<FallbackConfig, BuildError> {
    let actions = [
        policy.respond.is_some(),
        policy.forward_to.is_some(),
        policy.stale.is_some(),
    ];
    if actions.iter().filter(|given| **given).count() != 1 {
        return Err(BuildError::new(
            "a fallback takes exactly one action: `respond`, `forward_to` or `stale`",
        ));
    }
    let mut grpc_codes = Vec::new();
    let mut triggers: Vec<Trigger> = Vec::new();
    for trigger in &policy.on {
        triggers.push(match trigger {
            FallbackTrigger::BreakerOpen => Trigger::BreakerOpen,
            FallbackTrigger::Timeout => Trigger::Timeout,
            FallbackTrigger::RateLimited => Trigger::RateLimited,
            FallbackTrigger::NoEndpoint => Trigger::NoEndpoint,
            FallbackTrigger::Overloaded => Trigger::Overloaded,
            FallbackTrigger::ConnectFailure => Trigger::ConnectFailure,
            FallbackTrigger::Upstream5xx => Trigger::Upstream5xx,
            FallbackTrigger::UpstreamReset => Trigger::UpstreamReset,
            FallbackTrigger::Grpc(code) => {
                grpc_codes.push(*code);
                continue;
            }
        });
    }
    if !grpc_codes.is_empty() {
        triggers.push(Trigger::GrpcCodes(grpc_codes));
    }
    let action = if let Some(respond) = &policy.respond {
        let status = StatusCode::from_u16(respond.status)
            .ok()
            .filter(|status| status.as_u16() >= 200)
            .ok_or_else(|| format!("invalid status {}: use 200 to 599", respond.status))
            .at("respond.status")?;
        let mut headers = HeaderMap::new();
        for (name, value) in &respond.headers {
            let invalid = || {
                BuildError::at(
                    crate::config::FieldPath::root()
                        .key("respond")
                        .key("headers")
                        .key(name),
                    format!("invalid header {name}: {value:?}"),
                )
            };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
            let value = HeaderValue::from_str(value).map_err(|_| invalid())?;
            headers.insert(name, value);
        }
        let grpc = match (&respond.grpc_reply_base64, respond.grpc_status) {
            (Some(_), Some(code)) if code.0 != tonic::Code::Ok => {
                return Err("a gRPC reply message goes with status `ok`").at("respond.grpc_status");
            }
            (Some(reply), _) => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(reply.trim())
                    .map_err(|_| "not valid base64")
                    .at("respond.grpc_reply_base64")?;
                Some(GrpcReply::Message(Bytes::from(bytes)))
            }
            (None, Some(code)) => Some(GrpcReply::Status {
                code: code.0,
                message: respond.grpc_message.clone().unwrap_or_default(),
            }),
            (None, None) => None,
        };
        let body = Bytes::from(respond.body.clone());
        FallbackAction::Respond(StaticResponse::try_new(status, headers, body, grpc).at("respond")?)
    } else if let Some(target) = &policy.forward_to {
        FallbackAction::ForwardTo(
            alternate(target)
                .ok_or_else(|| format!("unknown service `{target}`"))
                .at("forward_to")?,
        )
    } else if let Some(stale) = &policy.stale {
        FallbackAction::Stale(
            StaleCache::try_new(stale.max_entries, stale.max_body_bytes, stale.max_age)
                .at("stale")?,
        )
    } else {
        return Err("a fallback needs `respond`, `forward_to` or `stale`".into());
    };
    FallbackConfig::try_new(triggers.into_iter().collect(), action).at("on")
}
