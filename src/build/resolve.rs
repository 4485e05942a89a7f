//! YAML policies -> each layer's own config type.
//!
//! Validation already refused what it can locate; these conversions run the layers'
//! own constructors (`try_new`), whose refusals name the policy by its field path. A
//! layer never sees YAML, and this file never builds a layer.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::config::{
    BreakerPolicy, Condition, FallbackPolicy, FallbackTrigger, FaultPolicy, PoliciesConfig,
    RateLimitKeyName, RateLimitPolicy, RetryPolicy,
};
use crate::core::outcome::Conditions;
use crate::policy::backoff::Backoff;
use crate::policy::budget::RetryBudget;
use crate::policy::circuit_breaker::{BreakerConfig, FailureRate};
use crate::policy::fallback::{
    FallbackAction, FallbackConfig, GrpcReply, StaleCache, StaticResponse, Trigger,
};
use crate::policy::fault::{AbortFault, DelayFault, FaultConfig};
use crate::policy::rate_limit::{Rate, RateLimitConfig, RateLimitKey};
use crate::policy::retry::RetryConfig;
use crate::policy::timeout::TimeoutConfig;
use crate::policy::ServiceStack;

/// `none` switches an inherited policy off on a route.
pub const NONE: &str = "none";

/// The failure conditions named in `retry_on` / `failure_on`.
pub fn conditions(list: &[Condition]) -> Conditions {
    let mut conditions = Conditions::default();
    for condition in list {
        match *condition {
            Condition::ConnectFailure => conditions.connect_failure = true,
            Condition::Reset => conditions.reset = true,
            Condition::Timeout => conditions.timeout = true,
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
pub fn timeout(policies: &PoliciesConfig, value: Option<&str>) -> Result<TimeoutConfig, String> {
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
    TimeoutConfig::try_new(request).map_err(|e| e.to_string())
}

/// A retry policy, with its own budget.
pub fn retry(policy: &RetryPolicy) -> Result<RetryConfig, String> {
    let backoff = Backoff::try_new(
        policy.backoff.base,
        policy.backoff.max,
        policy.backoff.jitter.0,
    )
    .map_err(|e| format!("backoff: {e}"))?;
    let budget = RetryBudget::try_new(
        policy.budget.ratio.0,
        policy.budget.min_per_second,
        policy.budget.window,
    )
    .map_err(|e| format!("budget: {e}"))?;
    RetryConfig::try_new(
        policy.attempts,
        conditions(&policy.retry_on),
        backoff,
        Arc::new(budget),
    )
    .and_then(|config| config.with_per_try_timeout(policy.per_try_timeout))
    .and_then(|config| config.with_max_replay_bytes(policy.max_replay_bytes))
    .map(|config| config.with_retry_non_idempotent(policy.retry_non_idempotent))
    .map_err(|e| e.to_string())
}

/// A circuit breaker.
pub fn breaker(policy: &BreakerPolicy) -> Result<BreakerConfig, String> {
    let failure_rate = policy
        .failure_rate
        .as_ref()
        .map(|rate| FailureRate::try_new(rate.threshold.0, rate.min_requests, rate.window))
        .transpose()
        .map_err(|e| e.to_string())?;
    BreakerConfig::try_new(
        policy.consecutive_failures,
        failure_rate,
        policy.open_for,
        policy.max_open_for,
        policy.half_open_requests,
        conditions(&policy.failure_on),
    )
    .map_err(|e| e.to_string())
}

/// A rate limit; the burst defaults to one period's worth of calls.
pub fn rate_limit(policy: &RateLimitPolicy) -> Result<RateLimitConfig, String> {
    let count = NonZeroU32::new(policy.rate.count).ok_or("the rate must be above zero")?;
    let burst = NonZeroU32::new(policy.burst.unwrap_or(policy.rate.count))
        .ok_or("burst must be at least 1")?;
    let key = match &policy.key {
        RateLimitKeyName::Global => RateLimitKey::Global,
        RateLimitKeyName::ClientIp => RateLimitKey::ClientIp,
        RateLimitKeyName::Header(name) => RateLimitKey::Header(
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("key: {e}"))?,
        ),
    };
    RateLimitConfig::try_new(
        Rate {
            count,
            per: policy.rate.per,
        },
        burst,
        key,
    )
    .map_err(|e| e.to_string())
}

/// Injected faults.
pub fn fault(policy: &FaultPolicy) -> Result<FaultConfig, String> {
    let delay = policy
        .delay
        .as_ref()
        .map(|d| DelayFault::try_new(d.percent.0 * 100.0, d.duration))
        .transpose()
        .map_err(|e| e.to_string())?;
    let abort = policy
        .abort
        .as_ref()
        .map(|a| {
            let status = StatusCode::from_u16(a.status).map_err(|e| e.to_string())?;
            AbortFault::try_new(a.percent.0 * 100.0, status).map_err(|e| e.to_string())
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
) -> Result<FallbackConfig, String> {
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
        let status = StatusCode::from_u16(respond.status).map_err(|e| e.to_string())?;
        let mut headers = HeaderMap::new();
        for (name, value) in &respond.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(value).map_err(|e| e.to_string())?;
            headers.insert(name, value);
        }
        let grpc = match (&respond.grpc_reply_base64, respond.grpc_status) {
            (Some(reply), _) => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(reply.trim())
                    .map_err(|e| format!("grpc_reply_base64: {e}"))?;
                Some(GrpcReply::Message(Bytes::from(bytes)))
            }
            (None, Some(code)) => Some(GrpcReply::Status {
                code: code.0,
                message: respond.grpc_message.clone().unwrap_or_default(),
            }),
            (None, None) => None,
        };
        let body = Bytes::from(respond.body.clone());
        FallbackAction::Respond(
            StaticResponse::try_new(status, headers, body, grpc).map_err(|e| e.to_string())?,
        )
    } else if let Some(target) = &policy.forward_to {
        FallbackAction::Forward(
            alternate(target).ok_or_else(|| format!("unknown service `{target}`"))?,
        )
    } else if let Some(stale) = &policy.stale {
        FallbackAction::Stale(
            StaleCache::try_new(stale.max_entries, stale.max_body_bytes, stale.max_age)
                .map_err(|e| e.to_string())?,
        )
    } else {
        return Err("a fallback needs `respond`, `forward_to` or `stale`".into());
    };
    FallbackConfig::try_new(triggers.into_iter().collect(), action).map_err(|e| e.to_string())
}

/// The tracing pipeline of a sidecar beside `config.service`.
pub fn tracing(config: &crate::config::Config) -> crate::trace::TracingConfig {
    use crate::config::{AttemptSpansName, OtlpProtocolName, PropagationName};
    use crate::trace::{AttemptSpans, OtlpProtocol, Propagation};
    let section = &config.tracing;
    let mut propagate = vec![Propagation::W3c];
    for name in &section.propagate {
        let format = match name {
            PropagationName::W3c => continue,
            PropagationName::B3 => Propagation::B3,
            PropagationName::Jaeger => Propagation::Jaeger,
        };
        if !propagate.contains(&format) {
            propagate.push(format);
        }
    }
    crate::trace::TracingConfig {
        endpoint: section.endpoint.clone(),
        protocol: match section.protocol {
            OtlpProtocolName::Grpc => OtlpProtocol::Grpc,
            OtlpProtocolName::Http => OtlpProtocol::HttpProtobuf,
        },
        sampling_ratio: section.sampling.0,
        propagate,
        service_name: config.service.clone(),
        queue_size: section.queue_size,
        batch_size: section.batch_size,
        batch_delay: section.batch_delay,
        export_timeout: section.export_timeout,
        access_log: section.access_log,
        attempt_spans: match section.attempt_spans {
            AttemptSpansName::Retries => AttemptSpans::Retries,
            AttemptSpansName::Always => AttemptSpans::Always,
        },
    }
}

/// The name of a registry's backend.
pub fn registry_backend(config: &crate::config::RegistryConfig) -> &'static str {
    crate::config::backend_of(config).unwrap_or("invalid")
}

/// A registry client for `config`.
pub fn registry(
    config: &crate::config::RegistryConfig,
) -> Result<Arc<dyn crate::discovery::Registry>, String> {
    use crate::discovery::{
        ConsulConfig, ConsulRegistry, DnsConfig, DnsRefresh, DnsRegistry, EtcdConfig, EtcdRegistry,
        FileConfig, FileRegistry,
    };
    if let Some(etcd) = &config.etcd {
        let mut settings = EtcdConfig::new(etcd.endpoints.clone());
        settings.prefix = etcd.prefix.clone();
        return Ok(Arc::new(
            EtcdRegistry::new(settings).map_err(|e| e.to_string())?,
        ));
    }
    if let Some(consul) = &config.consul {
        let mut settings = ConsulConfig::new(consul.address.clone());
        settings.token = consul.token.clone().filter(|t| !t.is_empty());
        return Ok(Arc::new(
            ConsulRegistry::new(settings).map_err(|e| e.to_string())?,
        ));
    }
    if let Some(dns) = &config.dns {
        let mut settings = DnsConfig {
            nameserver: dns.nameserver,
            ..DnsConfig::default()
        };
        if let Some(interval) = dns.interval {
            settings.refresh = DnsRefresh::Every(interval);
        }
        return Ok(Arc::new(
            DnsRegistry::new(settings).map_err(|e| e.to_string())?,
        ));
    }
    if let Some(file) = &config.file {
        return Ok(Arc::new(
            FileRegistry::new(FileConfig::new(file.path.clone())).map_err(|e| e.to_string())?,
        ));
    }
    Err("a registry takes exactly one of `etcd`, `consul`, `dns`, `file`".into())
}

/// A service's balancer.
pub fn balancer(
    section: &crate::config::BalancerSection,
) -> Result<crate::balance::BalancerConfig, String> {
    use crate::balance::{Balancer, BalancerConfig, HashAlgorithm, HashKey};
    use crate::config::BalancerAlgorithm as Algorithm;
    let key = || -> Result<HashKey, String> {
        let text = section.hash_key.as_deref().ok_or(
            "consistent hashing needs `hash_key`: `header:<name>`, `cookie:<name>` or `client_ip`",
        )?;
        if text == "client_ip" {
            return Ok(HashKey::ClientIp);
        }
        if let Some(name) = text.strip_prefix("header:") {
            return HeaderName::from_bytes(name.trim().as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("invalid header name in hash_key {text:?}"));
        }
        if let Some(name) = text.strip_prefix("cookie:") {
            return Ok(HashKey::Cookie(name.trim().to_string()));
        }
        Err(format!(
            "invalid hash_key {text:?}: expected `header:<name>`, `cookie:<name>` or `client_ip`"
        ))
    };
    let balancer = match section.algorithm {
        Algorithm::P2c => Balancer::default(),
        Algorithm::RoundRobin => Balancer::RoundRobin,
        Algorithm::LeastRequest => Balancer::LeastRequest,
        Algorithm::Random => Balancer::Random,
        Algorithm::RingHash => Balancer::ConsistentHash {
            key: key()?,
            algorithm: HashAlgorithm::ring(),
        },
        Algorithm::Maglev => Balancer::ConsistentHash {
            key: key()?,
            algorithm: HashAlgorithm::maglev(),
        },
    };
    if section.hash_key.is_some()
        && !matches!(section.algorithm, Algorithm::RingHash | Algorithm::Maglev)
    {
        return Err("`hash_key` only applies to `ring_hash` and `maglev`".into());
    }
    let threshold = (section.panic_threshold.0 * 100.0).round() as u8;
    BalancerConfig::try_new(balancer, threshold).map_err(|e| e.to_string())
}

/// Active health checks.
pub fn health_check(
    section: &crate::config::HealthCheckSection,
) -> Result<crate::health::HealthCheckConfig, String> {
    use crate::health::{HealthCheckConfig, Probe};
    let probes = [
        section.http.is_some(),
        section.tcp.is_some(),
        section.grpc.is_some(),
    ];
    if probes.iter().filter(|given| **given).count() != 1 {
        return Err("a health check takes exactly one of `http`, `tcp`, `grpc`".into());
    }
    let probe = if let Some(http) = &section.http {
        let mut expected = Vec::new();
        for range in &http.expected {
            let (low, high) = range.split_once('-').unwrap_or((range, range));
            let parse = |text: &str| {
                text.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("invalid status range {range:?}: write it like `200-399`"))
            };
            expected.push(parse(low)?..=parse(high)?);
        }
        Probe::Http {
            path: http.path.clone(),
            expected,
            host: http.host.clone(),
        }
    } else if let Some(grpc) = &section.grpc {
        Probe::Grpc {
            service: grpc.service.clone(),
        }
    } else {
        Probe::Tcp
    };
    HealthCheckConfig::try_new(
        probe,
        section.interval,
        section.timeout,
        section.unhealthy_threshold,
        section.healthy_threshold,
        0.1,
    )
    .map_err(|e| e.to_string())
}

/// Passive outlier ejection.
pub fn outlier(
    section: &crate::config::OutlierSection,
) -> Result<crate::health::OutlierConfig, String> {
    let percent = (section.max_ejection_percent.0 * 100.0).round() as u8;
    crate::health::OutlierConfig::try_new(
        section.consecutive_failures,
        conditions(&section.failure_on),
        section.base_ejection,
        section.max_ejection,
        percent,
    )
    .map_err(|e| e.to_string())
}

/// The connection pools' settings of `upstream` (validation keeps the HTTP/2 spread ≥ 1).
pub fn pool(upstream: &crate::config::UpstreamConfig) -> crate::upstream::PoolConfig {
    crate::upstream::PoolConfig {
        connect_timeout: upstream.connect_timeout,
        idle_timeout: upstream.pool_idle_timeout,
        max_idle_per_endpoint: upstream.pool_max_idle_per_endpoint,
        http2_max_connections: upstream.http2_connections_per_endpoint.max(1),
        http2_streams_per_connection: upstream.http2_streams_per_connection.max(1),
        http2_keep_alive_interval: std::time::Duration::from_secs(30),
    }
}

/// What the sidecar of `service` registers, from its `register` section.
pub fn registration(
    section: &crate::config::RegisterSection,
    service: &str,
) -> crate::discovery::self_registration::RegistrationPlan {
    let id = section
        .id
        .clone()
        .unwrap_or_else(|| section.address.to_string());
    let mut instance = crate::discovery::Instance::new(section.address).with_id(id);
    instance.weight = section.weight;
    instance.metadata = section.metadata.clone();
    crate::discovery::self_registration::RegistrationPlan {
        service: section.name.clone().unwrap_or_else(|| service.to_string()),
        instance,
        ttl: section.ttl,
        deregister_delay: section.deregister_delay,
    }
}
