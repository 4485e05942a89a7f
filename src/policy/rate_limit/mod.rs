//! Rate limiting: a GCRA token bucket (the `governor` crate) per service, per client IP
//! or per header value.
//!
//! This layer sits outermost in a service's stack, so it counts the calls a client
//! makes, not the attempts retries make below it. A refused call fails at once with
//! [`ProxyError::RateLimited`], whose `retry_after` is the limiter's real wait until a
//! call with the same key would pass (the `Retry-After` a caller sees).
//!
//! Keyed limits keep one bucket per key in a table of at most
//! [`RateLimitConfig::max_keys`] entries, so hostile keys (spoofed header values, a
//! rotating IPv6 range) cannot grow memory without bound. When the table is full, calls
//! with a key it does not hold share one overflow bucket of the same quota until a
//! sweep drops the keys whose buckets have refilled.
//!
//! A limit with a `shared` part keeps its buckets in Redis instead ([`shared`]), so
//! that every replica of a service spends one budget; its local limiter stays as the
//! fallback for when Redis is down.

mod config;
mod key;
mod layer;
mod metrics;
mod service;
pub mod shared;
#[cfg(test)]
mod tests;

pub use config::{Rate, RateLimitConfig, RateLimitConfigError, RateLimitKey, DEFAULT_MAX_KEYS};
pub use layer::RateLimitLayer;
pub use metrics::RateLimitMetrics;
pub use service::RateLimit;
