//! The resilience policies, one tower layer each, and the shape of the stack they form.
//!
//! Every request to a service passes through one [`Stack`]: a tower service built once
//! per config (by the build floor's `stack` module) and cloned per request. Outermost
//! first:
//!
//! ```text
//! fallback -> rate limit -> concurrency cap -> timeout -> retry -> service breaker
//!          -> fault injection -> Forward (balancer + endpoint breakers)
//! ```
//!
//! The rate limit counts calls, not retries; retries see the breaker's fast failures;
//! the fallback sees the final outcome. NOTE: the rate limit sits below the fallback so
//! that `rate_limited` can be a fallback trigger while still counting calls, not
//! retries. Faults are injected per attempt, so an injected abort rehearses exactly what
//! an upstream failure does to retries, breakers and fallbacks.
//!
//! Only configured layers are in a stack (except the timeout layer, which also enforces
//! an incoming `grpc-timeout`), so a service without policies pays for none of them. The
//! stack is one concrete type: an absent layer is the `Right` side of an [`Either`], and
//! no layer boxes the service below it, so a call costs no allocation per layer. No
//! layer here knows YAML: each takes the typed settings its own module defines.

pub mod authorize;
pub mod backoff;
pub mod budget;
pub mod circuit_breaker;
pub mod concurrency;
pub mod fallback;
pub mod fault;
pub mod rate_limit;
pub mod retry;
#[cfg(test)]
pub(crate) mod test_support;
pub mod timeout;

use std::sync::Arc;

use http::{Request, Response};
use prometheus_client::registry::Registry as MetricsRegistry;
use tower::util::{BoxCloneSyncService, Either};

use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;
use crate::upstream::Forward;
#[cfg(test)]
use timeout::TimeoutLayer;
#[cfg(test)]
use tower::Layer;

use circuit_breaker::{
    BreakerMetrics, BreakerView, EndpointBreakers, ServiceBreaker, ServiceBreakerHandle,
};
use concurrency::{ConcurrencyLimit, ConcurrencyMetrics};
use fallback::{Fallback, FallbackMetrics};
use fault::{Fault, FaultMetrics};
use rate_limit::{RateLimit, RateLimitMetrics};
use retry::{Retry, RetryMetrics};
use timeout::{Timeout, TimeoutMetrics};

/// A stack, type-erased: a fallback's alternate service, and tests' stand-ins.
pub type ServiceStack = BoxCloneSyncService<Request<ProxyBody>, Response<ProxyBody>, ProxyError>;

/// A stack from `fault` down.
pub type WithFault = Either<Fault<Forward>, Forward>;
/// A stack from `breaker` down.
pub type WithBreaker = Either<ServiceBreaker<WithFault>, WithFault>;
/// A stack from `retry` down.
pub type WithRetry = Either<Retry<WithBreaker>, WithBreaker>;
/// A stack from `timeout` down.
pub type WithTimeout = Timeout<WithRetry>;
/// A stack from `concurrency` down.
pub type WithConcurrency = Either<ConcurrencyLimit<WithTimeout>, WithTimeout>;
/// A stack without its fallback: rate limit down to `Forward`, each optional layer present
/// or passed over.
pub type CoreStack = Either<RateLimit<WithConcurrency>, WithConcurrency>;
/// A whole stack, as requests go through it.
pub type Stack = Either<Fallback<CoreStack>, CoreStack>;

/// Every policy's metrics, registered once and shared by the stacks of every config.
#[derive(Debug, Clone)]
pub struct PolicyMetrics {
    /// Retries, attempts, budget.
    pub retry: RetryMetrics,
    /// Timeouts.
    pub timeout: TimeoutMetrics,
    /// Breaker states and transitions.
    pub breaker: BreakerMetrics,
    /// Rate-limited calls.
    pub rate_limit: RateLimitMetrics,
    /// Shed calls and in-flight counts.
    pub concurrency: ConcurrencyMetrics,
    /// Injected faults.
    pub fault: FaultMetrics,
    /// Fallbacks served.
    pub fallback: FallbackMetrics,
}

impl PolicyMetrics {
    /// Registers every policy metric in `registry`.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        Self {
            retry: RetryMetrics::register(registry),
            timeout: TimeoutMetrics::register(registry),
            breaker: BreakerMetrics::register(registry),
            rate_limit: RateLimitMetrics::register(registry),
            concurrency: ConcurrencyMetrics::register(registry),
            fault: FaultMetrics::register(registry),
            fallback: FallbackMetrics::register(registry),
        }
    }
}

/// A breaker the admin listener can show.
#[derive(Clone)]
pub enum BreakerSource {
    /// A service's breaker.
    Service(ServiceBreakerHandle),
    /// A service's endpoint breakers.
    Endpoints(Arc<EndpointBreakers>),
}

impl std::fmt::Debug for BreakerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Service(_) => "BreakerSource::Service",
            Self::Endpoints(_) => "BreakerSource::Endpoints",
        })
    }
}

impl BreakerSource {
    /// The breakers' current views.
    pub fn snapshot(&self) -> Vec<BreakerView> {
        match self {
            Self::Service(handle) => handle.snapshot(),
            Self::Endpoints(breakers) => breakers.snapshot(),
        }
    }
}

/// A stack of `forward` alone, under the timeout layer every stack has.
#[cfg(test)]
pub(crate) fn bare(forward: Forward) -> Stack {
    let timeout = TimeoutLayer::new(
        timeout::TimeoutConfig::default(),
        Arc::from("test"),
        TimeoutMetrics::default(),
    );
    Either::Right(Either::Right(Either::Right(
        timeout.layer(Either::Right(Either::Right(Either::Right(forward)))),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How much a call's future may grow past its measured size before `future_sizes`
    /// fails: one word.
    const MARGIN: usize = 8;

    /// The size of a call's future through each part of the stack, outermost first, as
    /// measured on a 64-bit target when the bound was last set. Every call pays for
    /// these bytes; raise one only for a growth that is worth it.
    const MEASURED: [(&str, usize); 9] = [
        ("Stack", 280),
        ("Fallback<CoreStack>", 280),
        ("CoreStack", 248),
        ("WithConcurrency", 216),
        ("WithTimeout", 208),
        ("WithRetry", 56),
        ("WithBreaker", 48),
        ("WithFault", 24),
        ("Forward", 16),
    ];

    /// The size of a call's future through the part of the stack named `name`.
    fn future_size(name: &str) -> usize {
        use std::mem::size_of;
        use tower::Service;
        type FutureOf<S> = <S as Service<Request<ProxyBody>>>::Future;
        match name {
            "Stack" => size_of::<FutureOf<Stack>>(),
            "Fallback<CoreStack>" => size_of::<FutureOf<Fallback<CoreStack>>>(),
            "CoreStack" => size_of::<FutureOf<CoreStack>>(),
            "WithConcurrency" => size_of::<FutureOf<WithConcurrency>>(),
            "WithTimeout" => size_of::<FutureOf<WithTimeout>>(),
            "WithRetry" => size_of::<FutureOf<WithRetry>>(),
            "WithBreaker" => size_of::<FutureOf<WithBreaker>>(),
            "WithFault" => size_of::<FutureOf<WithFault>>(),
            "Forward" => size_of::<FutureOf<Forward>>(),
            other => panic!("no stack part named {other}"),
        }
    }

    /// A call's future through each part of the stack stays within its measured size
    /// (plus [`MARGIN`]); `cargo nextest run future_sizes --no-capture` prints them.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn future_sizes() {
        let mut grown = Vec::new();
        for (name, measured) in MEASURED {
            let size = future_size(name);
            println!("{name}: {size} B (measured {measured} B)");
            if size > measured + MARGIN {
                grown.push(format!(
                    "{name}: {size} B, {} B more than the {measured} B measured \
                     ({MARGIN} B allowed)",
                    size - measured
                ));
            }
        }
        assert!(
            grown.is_empty(),
            "a call's future grew (every call pays for it; box the rare part, or raise \
             MEASURED in policy::tests if the growth is worth it):\n{}",
            grown.join("\n")
        );
    }
}
