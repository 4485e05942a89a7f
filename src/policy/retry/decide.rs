//! Whether, and after how long, a failed attempt is retried: the conditions, the
//! attempts left, the body, the server's pushback, the call's deadline and the budget,
//! in that order, so that a retry the budget pays for is one that will be sent.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;

use super::layer::Shared;
use super::pushback::{server_delay, ServerDelay};
use super::resend::Resend;
use crate::core::body::ProxyBody;
use crate::core::call::EndpointUsed;
use crate::core::error::ProxyError;
use crate::policy::timeout::TimeoutKind;

impl Shared {
    /// After attempt `attempt` ended with `result`: the wait and the request of the next
    /// attempt, or `None` when it is not retried. Withdraws from the budget when it is.
    pub(super) fn next_attempt(
        &self,
        resend: &Resend,
        result: &mut Result<Response<ProxyBody>, ProxyError>,
        attempt: u32,
        deadline: Option<Instant>,
    ) -> Option<(Duration, Request<ProxyBody>)> {
        if !resend.may_retry(result) || !self.retries(result, attempt) {
            return None;
        }
        if resend.is_unsent() {
            // The unsent request stays in the error unless it is retried.
            let delay = self.retry_delay(result, attempt, deadline)?;
            return Some((delay, resend.unsent(result)?));
        }
        // The body first (a copy costs no allocation): a retry it cannot carry is not
        // withdrawn from the budget. The head is copied only for a retry.
        let Some(body) = resend.body(result) else {
            self.counters.not_replayable.inc();
            return None;
        };
        let delay = self.retry_delay(result, attempt, deadline)?;
        Some((delay, resend.request(body)?))
    }

    /// Whether attempt `attempt`, ended with `result`, is one the config retries.
    fn retries(&self, result: &Result<Response<ProxyBody>, ProxyError>, attempt: u32) -> bool {
        attempt < self.config.max_attempts && self.config.conditions.matches(result)
    }

    /// How long to wait before the retry of a matching `result` of attempt `attempt`;
    /// `None` when the server refused, the call's `deadline` leaves no time for the wait,
    /// or the budget is spent. Withdraws from the budget when it returns a wait.
    fn retry_delay(
        &self,
        result: &Result<Response<ProxyBody>, ProxyError>,
        attempt: u32,
        deadline: Option<Instant>,
    ) -> Option<Duration> {
        let backoff = &self.config.backoff;
        let delay = match server_delay(result) {
            ServerDelay::Refused => return None,
            // NOTE: a server's wait is capped at the backoff maximum, so one response
            // cannot park a call (and its caller) for minutes.
            ServerDelay::After(wait) => wait.min(backoff.max()),
            ServerDelay::Unspecified => backoff.delay(attempt - 1),
        };
        if let Some(deadline) = deadline {
            // No time left for another attempt: the last failure says more than a timeout.
            if Instant::now() + delay >= deadline {
                return None;
            }
        }
        if !self.config.budget.try_withdraw() {
            self.counters.budget_exhausted.inc();
            if !self.exhausted.swap(true, Ordering::Relaxed) {
                tracing::warn!(service = %self.service, "retry budget exhausted: failed calls are not retried");
            }
            return None;
        }
        if self.exhausted.load(Ordering::Relaxed) && self.exhausted.swap(false, Ordering::Relaxed) {
            tracing::info!(service = %self.service, "retry budget available again");
        }
        self.counters.retries.inc();
        Some(delay)
    }

    /// The error of an attempt that ran past the per-try timeout, counted.
    pub(super) fn per_try_expired(&self) -> ProxyError {
        let limit = self.config.per_try_timeout.unwrap_or_default();
        if let Some(metrics) = &self.timeout_metrics {
            metrics.record(&self.service, TimeoutKind::PerTry);
        }
        ProxyError::Timeout(limit)
    }
}

/// The endpoint an attempt went to, when the result names it.
pub(super) fn failed_endpoint(
    result: &Result<Response<ProxyBody>, ProxyError>,
) -> Option<SocketAddr> {
    match result {
        Ok(response) => response.extensions().get::<EndpointUsed>().map(|e| e.0),
        Err(ProxyError::Connect { endpoint, .. } | ProxyError::Upstream { endpoint, .. }) => {
            endpoint.parse().ok()
        }
        Err(_) => None,
    }
}
