//! What a retry policy is made of, validated once: attempts, the conditions retried,
//! the per-try bound, the backoff, the budget, which methods, and how much of a request
//! body is recorded to send again.

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::core::outcome::Conditions;
use crate::policy::backoff::RetryBackoff;
use crate::policy::budget::RetryBudget;

/// A rejected retry configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry config: {0}")]
pub struct InvalidRetryConfig(&'static str);

/// When and how a service's calls are retried. Built by [`RetryConfig::try_new`] and
/// its `with_*` methods, which validate; the request path trusts it.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Attempts in total, the first included; `>= 1`.
    pub(super) max_attempts: u32,
    /// The results that are retried.
    pub(super) conditions: Conditions,
    /// Bound on each attempt (`ProxyError::Timeout`, a `timeout` condition); non-zero.
    pub(super) per_try_timeout: Option<Duration>,
    /// Wait between attempts; also caps a server's `Retry-After` / pushback.
    pub(super) backoff: RetryBackoff,
    /// Shared by every clone of the layer built from this config.
    pub(super) budget: Arc<RetryBudget>,
    /// Whether POST, PATCH, CONNECT (and unknown methods) are retried too.
    pub(super) retry_non_idempotent: bool,
    /// Largest request body kept for replay; `<= MAX_REPLAY_LIMIT`.
    pub(super) max_replay_bytes: usize,
}

/// Upper bound on `max_replay_bytes`: recordings are per request, in memory.
const MAX_REPLAY_LIMIT: usize = 16 * 1024 * 1024;

impl RetryConfig {
    /// Default bound on a replayable request body.
    pub const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;

    /// Up to `max_attempts` attempts (the first included) of idempotent calls whose
    /// result matches `conditions`; no per-try timeout, 64 KiB replay bound.
    pub fn try_new(
        max_attempts: u32,
        conditions: Conditions,
        backoff: RetryBackoff,
        budget: Arc<RetryBudget>,
    ) -> Result<Self, InvalidRetryConfig> {
        if max_attempts == 0 {
            return Err(InvalidRetryConfig(
                "max_attempts must be at least 1 (it counts the first attempt)",
            ));
        }
        if max_attempts > 100 {
            return Err(InvalidRetryConfig("max_attempts must be at most 100"));
        }
        Ok(Self {
            max_attempts,
            conditions,
            per_try_timeout: None,
            backoff,
            budget,
            retry_non_idempotent: false,
            max_replay_bytes: Self::DEFAULT_MAX_REPLAY_BYTES,
        })
    }

    /// Bounds each attempt by `timeout`.
    pub fn with_per_try_timeout(
        mut self,
        timeout: Option<Duration>,
    ) -> Result<Self, InvalidRetryConfig> {
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(InvalidRetryConfig("per_try_timeout must be non-zero"));
        }
        self.per_try_timeout = timeout;
        Ok(self)
    }

    /// Retries every method, not only GET, HEAD, OPTIONS, PUT, DELETE and TRACE.
    pub fn with_retry_non_idempotent(mut self, retry: bool) -> Self {
        self.retry_non_idempotent = retry;
        self
    }

    /// Keeps request bodies of up to `bytes` for replay.
    pub fn with_max_replay_bytes(mut self, bytes: usize) -> Result<Self, InvalidRetryConfig> {
        if bytes > MAX_REPLAY_LIMIT {
            return Err(InvalidRetryConfig(
                "max_replay_bytes must be at most 16 MiB",
            ));
        }
        self.max_replay_bytes = bytes;
        Ok(self)
    }

    /// Whether a call of `method` may be sent more than once (whatever its result).
    pub(super) fn method_retryable(&self, method: &Method) -> bool {
        self.retry_non_idempotent
            || matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::PUT
                    | Method::DELETE
                    | Method::TRACE
            )
    }
}
