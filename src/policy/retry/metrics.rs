//! Retry's metrics: attempts sent (first or retry), retries decided, and retries given up
//! for the budget or for a body that could not be sent again.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as MetricsRegistry;

use crate::core::labels::{register_per_service, ByService, PerService, ServiceLabel};

/// First attempt or retry, as a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirstOrRetry {
    /// The call's first attempt.
    First,
    /// Any later attempt.
    Retry,
}

impl EncodeLabelValue for FirstOrRetry {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(match self {
            Self::First => "first",
            Self::Retry => "retry",
        })
    }
}

/// Labels of the attempt counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AttemptLabels {
    /// The service called.
    pub service: ServiceLabel,
    /// First attempt or retry.
    pub attempt: FirstOrRetry,
}

/// Retry's counters.
#[derive(Debug, Clone, Default)]
pub struct RetryMetrics {
    /// `remora_retry_attempts_total{service, attempt}`: attempts sent.
    pub(super) attempts: Family<AttemptLabels, Counter>,
    /// `remora_retries_total{service}`: decisions to retry.
    pub(super) retries: PerService<Counter>,
    /// `remora_retry_budget_exhausted_total{service}`: retries refused by the budget.
    pub(super) budget_exhausted: PerService<Counter>,
    /// `remora_retry_not_replayable_total{service}`: retries given up for the body.
    pub(super) not_replayable: PerService<Counter>,
}

impl RetryMetrics {
    /// Registers retry's counters.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "retry_attempts",
            "Attempts sent upstream, by service and whether first or retry",
            attempts.clone(),
        );
        Self {
            attempts,
            retries: register_per_service(registry, "retries", "Failed attempts that were retried"),
            budget_exhausted: register_per_service(
                registry,
                "retry_budget_exhausted",
                "Failed attempts not retried because the retry budget was spent",
            ),
            not_replayable: register_per_service(
                registry,
                "retry_not_replayable",
                "Failed attempts not retried because the request body could not be replayed",
            ),
        }
    }

    /// `service`'s counter handles, looked up once per layer rather than per call.
    pub(super) fn of(&self, service: &Arc<str>) -> RetryCounters {
        let attempts = |attempt| {
            self.attempts
                .get_or_create(&AttemptLabels {
                    service: ServiceLabel(service.clone()),
                    attempt,
                })
                .clone()
        };
        let first = attempts(FirstOrRetry::First);
        let retry = attempts(FirstOrRetry::Retry);
        let labels = ByService::of(service);
        let retries = self.retries.get_or_create(&labels).clone();
        let budget_exhausted = self.budget_exhausted.get_or_create(&labels).clone();
        let not_replayable = self.not_replayable.get_or_create(&labels).clone();
        RetryCounters {
            first,
            retry,
            retries,
            budget_exhausted,
            not_replayable,
        }
    }
}

/// One service's retry counters.
#[derive(Debug)]
pub(super) struct RetryCounters {
    /// First attempts sent.
    pub(super) first: Counter,
    /// Later attempts sent.
    pub(super) retry: Counter,
    /// Decisions to retry.
    pub(super) retries: Counter,
    /// Retries the budget refused.
    pub(super) budget_exhausted: Counter,
    /// Retries given up because the body could not be sent again.
    pub(super) not_replayable: Counter,
}
