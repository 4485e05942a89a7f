//! The peak-EWMA round-trip-time estimate of one endpoint (Finagle/Linkerd style).
//!
//! Every attempt ends with a sample: the time from sending the request to its response
//! headers. A sample above the estimate replaces it at once (peak), so an endpoint that
//! turns slow looks slow on its next answer; a sample below it is averaged in with a
//! weight that grows with the time since the previous sample (`1 - e^(-Δ/decay)`), so
//! the estimate comes down over about `decay`.
//!
//! The estimate the balancer reads is discounted by the time since the last sample
//! (`× e^(-idle/decay)`): an endpoint nobody sends to (because it looked slow) looks
//! cheaper the longer it is left alone, and is tried again; its next sample then sets
//! the estimate afresh. Linkerd and Finagle get the same effect by decaying the stored
//! estimate toward zero when they read it.
//!
//! The first sample replaces `default_rtt`, the estimate of an endpoint not measured
//! yet (P2C tries such an endpoint first: see `p2c::peak_ewma_cost`).
//!
//! Lock-free: the estimate is an `f64` in an `AtomicU64` updated by compare-and-swap, the
//! time of the last sample a separate `AtomicU64`.
//!
//! NOTE: the two words are not updated as one, so a reader racing a writer may pair the
//! new estimate with the previous sample's time (or the other way round), and two writers
//! racing may both average over the same interval. Either errs by the decay over one
//! interval between samples, which is tiny while the endpoint takes traffic; a lock per
//! endpoint read twice per pick would cost more than it buys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::core::clock;

/// Bits of the estimate before the first sample (a NaN no arithmetic produces here).
const UNMEASURED: u64 = u64::MAX;

/// The most a failed attempt counts for, in nanoseconds (10 s).
const MAX_FAILURE_SAMPLE_NS: f64 = 10e9;

/// Parameters of every estimate of one endpoint set, in nanoseconds as `f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct EwmaParams {
    /// The time constant; non-zero.
    pub decay_ns: f64,
    /// The estimate before the first sample; non-zero.
    pub default_rtt_ns: f64,
}

impl EwmaParams {
    /// From validated, non-zero durations.
    pub fn new(decay: Duration, default_rtt: Duration) -> Self {
        Self {
            decay_ns: decay.as_nanos() as f64,
            default_rtt_ns: default_rtt.as_nanos() as f64,
        }
    }
}

/// A peak-EWMA estimate of an endpoint's round-trip time.
#[derive(Debug)]
pub struct PeakEwma {
    /// When the estimate was made; `stamp` counts from here.
    epoch: Instant,
    /// The estimate in nanoseconds as `f64` bits, or [`UNMEASURED`].
    estimate: AtomicU64,
    /// Nanoseconds from `epoch` to the last sample (0 before the first).
    stamp: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new()
    }
}

impl PeakEwma {
    /// An estimate with no sample yet.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            estimate: AtomicU64::new(UNMEASURED),
            stamp: AtomicU64::new(0),
        }
    }

    /// Whether any sample was recorded.
    pub fn is_measured(&self) -> bool {
        self.estimate.load(Ordering::Acquire) != UNMEASURED
    }

    /// Records that an attempt answered after `rtt`.
    pub(crate) fn record(&self, rtt: Duration, params: EwmaParams) {
        self.record_at(rtt.as_nanos() as f64, clock::now(), params);
    }

    /// Records that an attempt failed after `elapsed`: it counts as twice the current
    /// estimate (at least `elapsed` and the default RTT, at most 10 s), so one failure
    /// makes an endpoint a little dearer and a run of fast failures (a black hole)
    /// very dear, until answers and time bring it back.
    pub(crate) fn record_failure(&self, elapsed: Duration, params: EwmaParams) {
        let bits = self.estimate.load(Ordering::Acquire);
        let current = if bits == UNMEASURED {
            params.default_rtt_ns
        } else {
            f64::from_bits(bits)
        };
        let sample = (2.0 * current)
            .max(params.default_rtt_ns)
            .min(MAX_FAILURE_SAMPLE_NS)
            .max(elapsed.as_nanos() as f64);
        self.record_at(sample, clock::now(), params);
    }

    /// Records a sample of `sample_ns` taken at `now`.
    pub(crate) fn record_at(&self, sample_ns: f64, now: Instant, params: EwmaParams) {
        let now_ns = self.nanos_since_epoch(now);
        let mut bits = self.estimate.load(Ordering::Acquire);
        loop {
            let next = if bits == UNMEASURED {
                sample_ns
            } else {
                let current = f64::from_bits(bits);
                if sample_ns >= current {
                    sample_ns
                } else {
                    let since = now_ns.saturating_sub(self.stamp.load(Ordering::Acquire));
                    let kept = (-(since as f64) / params.decay_ns).exp();
                    current * kept + sample_ns * (1.0 - kept)
                }
            };
            match self.estimate.compare_exchange_weak(
                bits,
                next.to_bits(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => bits = actual,
            }
        }
        self.stamp.fetch_max(now_ns, Ordering::AcqRel);
    }

    /// The estimate as the balancer sees it at `now`, in nanoseconds: the average (or
    /// the default before any sample) discounted by the time since the last sample.
    pub(crate) fn cost_at(&self, now: Instant, params: EwmaParams) -> f64 {
        let bits = self.estimate.load(Ordering::Acquire);
        let estimate = if bits == UNMEASURED {
            params.default_rtt_ns
        } else {
            f64::from_bits(bits)
        };
        let idle = self
            .nanos_since_epoch(now)
            .saturating_sub(self.stamp.load(Ordering::Acquire));
        estimate * (-(idle as f64) / params.decay_ns).exp()
    }

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;

    fn params() -> EwmaParams {
        EwmaParams::new(Duration::from_secs(10), Duration::from_millis(30))
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-6 * expected.max(1.0),
            "{actual} != {expected}"
        );
    }

    fn cost_ms(ewma: &PeakEwma) -> f64 {
        ewma.cost_at(Instant::now(), params()) / MS
    }

    #[tokio::test(start_paused = true)]
    async fn unmeasured_is_the_default_and_the_first_sample_replaces_it() {
        let ewma = PeakEwma::new();
        assert!(!ewma.is_measured());
        assert_close(cost_ms(&ewma), 30.0);
        ewma.record(Duration::from_millis(2), params());
        assert!(ewma.is_measured());
        assert_close(cost_ms(&ewma), 2.0);
    }

    #[tokio::test(start_paused = true)]
    async fn peaks_replace_at_once_and_lower_samples_decay_in() {
        let ewma = PeakEwma::new();
        ewma.record(Duration::from_millis(10), params());
        ewma.record(Duration::from_millis(100), params());
        assert_close(cost_ms(&ewma), 100.0);

        // One decay later, a 10 ms sample weighs 1 - 1/e.
        tokio::time::advance(Duration::from_secs(10)).await;
        ewma.record(Duration::from_millis(10), params());
        let e = (-1.0f64).exp();
        let averaged = 100.0 * e + 10.0 * (1.0 - e);
        assert_close(cost_ms(&ewma), averaged);

        // A sample right after another barely moves it.
        ewma.record(Duration::from_millis(1), params());
        assert_close(cost_ms(&ewma), averaged);

        // Left alone for two decays, it looks e^2 times cheaper.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_close(cost_ms(&ewma), averaged * e * e);

        // After idling, a lower sample is averaged with the stored estimate over the
        // whole idle time; a higher one replaces it.
        ewma.record(Duration::from_millis(20), params());
        assert_close(cost_ms(&ewma), averaged * e * e + 20.0 * (1.0 - e * e));
        ewma.record(Duration::from_millis(60), params());
        assert_close(cost_ms(&ewma), 60.0);
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_decay_weighs_a_sample_by_one_minus_e_to_the_minus_half() {
        let ewma = PeakEwma::new();
        ewma.record(Duration::from_millis(40), params());
        tokio::time::advance(Duration::from_secs(5)).await;
        ewma.record(Duration::from_millis(20), params());
        let kept = (-0.5f64).exp();
        assert_close(cost_ms(&ewma), 40.0 * kept + 20.0 * (1.0 - kept));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_double_the_estimate_within_bounds() {
        let ewma = PeakEwma::new();
        // Unmeasured, the estimate is the default: 30 ms.
        ewma.record_failure(Duration::from_micros(100), params());
        assert_close(cost_ms(&ewma), 60.0);
        ewma.record_failure(Duration::from_micros(100), params());
        assert_close(cost_ms(&ewma), 120.0);
        let fast = PeakEwma::new();
        fast.record(Duration::from_millis(1), params());
        fast.record_failure(Duration::ZERO, params());
        assert_close(cost_ms(&fast), 30.0);
        for _ in 0..20 {
            ewma.record_failure(Duration::ZERO, params());
        }
        assert_close(cost_ms(&ewma), 10_000.0);
        // A failure slower than that still counts for what it took.
        ewma.record_failure(Duration::from_secs(12), params());
        assert_close(cost_ms(&ewma), 12_000.0);
    }
}
