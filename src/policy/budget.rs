//! The retry budget: retries may add at most a fraction of the recent load.
//!
//! Every call deposits, every retry withdraws. Over a sliding window, retries are allowed
//! while `withdrawals < ratio × deposits + min_per_second × window`. The floor lets a
//! service with little traffic still retry; the ratio stops a failing upstream from being
//! hit by a retry storm (each call retried `max_attempts − 1` times under load).
//!
//! One budget is shared by every clone of a service's retry layer (`Arc`).
//!
//! Not tower's `retry::budget::TpsBudget`, which does the same bookkeeping but deposits
//! only at the present moment (retry dates a call's deposit by its arrival, so a call
//! that queued above the layer counts where it arrived), turns the ratio into whole
//! tokens per deposit and withdrawal (0.3 retries per call would become one in three),
//! and panics outside a 1 to 60 s window where remora's configuration allows 100 ms to 1
//! h and reports the error.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Buckets per window: the window slides in steps of a tenth of its length.
const BUCKETS: usize = 10;

/// A rejected budget configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry budget: {0}")]
pub struct InvalidBudget(&'static str);

/// Retries allowed per recent requests, shared per service.
#[derive(Debug)]
pub struct RetryBudget {
    /// Retries allowed per deposited request; finite, `>= 0`.
    ratio: f64,
    /// Retries always allowed per window, whatever the load (`min_per_second × window`).
    floor: f64,
    /// Length of one bucket (a tenth of the window) in nanoseconds; non-zero.
    bucket_nanos: u64,
    /// Time zero of the bucket numbering.
    origin: Instant,
    /// Held for a few arithmetic operations, never across an await.
    buckets: Mutex<[Bucket; BUCKETS]>,
}

/// Deposits and withdrawals during one bucket's span of time.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which span (bucket number since `origin`) the counts belong to.
    tick: u64,
    deposits: u64,
    withdrawals: u64,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per request plus `min_per_second` retries per
    /// second, counted over the last `window`.
    pub fn try_new(
        ratio: f64,
        min_per_second: u32,
        window: Duration,
    ) -> Result<Self, InvalidBudget> {
        if !ratio.is_finite() || ratio < 0.0 {
            return Err(InvalidBudget("ratio must be a non-negative number"));
        }
        if ratio > 1000.0 {
            return Err(InvalidBudget("ratio must be at most 1000"));
        }
        if window < Duration::from_millis(100) || window > Duration::from_secs(3600) {
            return Err(InvalidBudget("window must be between 100ms and 1h"));
        }
        Ok(Self {
            ratio,
            floor: f64::from(min_per_second) * window.as_secs_f64(),
            bucket_nanos: (window / BUCKETS as u32).as_nanos() as u64,
            origin: Instant::now(),
            buckets: Mutex::new([Bucket::default(); BUCKETS]),
        })
    }

    /// Counts a request arriving now: each one earns `ratio` retries for the length of
    /// the window.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Counts a request that arrived at `arrived` (a moment ago: callers that know when
    /// the call arrived save a clock read).
    pub fn deposit_at(&self, arrived: Instant) {
        // Every call deposits, so this skips the window totals only a withdrawal needs:
        // a bucket is cleared by its age alone, so clearing the others later is the same.
        let tick = self.tick_at(arrived);
        let mut buckets = self.lock();
        let current = Self::current(&mut buckets, tick);
        current.deposits += 1;
    }

    /// Takes one retry from the budget; `false` when the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        self.with_current(|current, (deposits, withdrawals)| {
            let allowed = self.ratio * deposits as f64 + self.floor;
            if (withdrawals as f64) + 1.0 > allowed {
                return false;
            }
            current.withdrawals += 1;
            true
        })
    }

    /// Runs `f` on the current bucket with the window's (deposits, withdrawals) totals,
    /// after clearing buckets that slid out of the window.
    fn with_current<T>(&self, f: impl FnOnce(&mut Bucket, (u64, u64)) -> T) -> T {
        let mut buckets = self.lock();
        let tick = self.tick();
        let mut totals = (0, 0);
        for bucket in buckets.iter_mut() {
            if tick.saturating_sub(bucket.tick) >= BUCKETS as u64 {
                *bucket = Bucket::default();
            }
            totals.0 += bucket.deposits;
            totals.1 += bucket.withdrawals;
        }
        f(Self::current(&mut buckets, tick), totals)
    }

    /// The bucket of `tick`, adopted for it (emptied) when it last counted an older span.
    fn current(buckets: &mut [Bucket; BUCKETS], tick: u64) -> &mut Bucket {
        let current = &mut buckets[(tick % BUCKETS as u64) as usize];
        // A newer span's bucket is kept: a deposit dated a whole window back (a call that
        // arrived long before it reached the retry layer) counts in it rather than erasing it.
        if current.tick < tick {
            // An older span's bucket, a whole window or more ago: its counts are done.
            *current = Bucket {
                tick,
                ..Bucket::default()
            };
        }
        current
    }

    /// The current bucket number since `origin`. Read under the lock by withdrawals, so
    /// that the ticks they see never go backwards.
    fn tick(&self) -> u64 {
        self.tick_at(Instant::now())
    }

    /// The bucket number of `at`.
    fn tick_at(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.origin);
        // In u64 nanoseconds (585 years), which divide far faster than u128.
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        nanos / self.bucket_nanos
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Bucket; BUCKETS]> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for RetryBudget {
    /// 20% of requests, plus 10 retries per second, over 10 s (linkerd's defaults).
    fn default() -> Self {
        Self {
            ratio: 0.2,
            floor: 100.0,
            bucket_nanos: 1_000_000_000,
            origin: Instant::now(),
            buckets: Mutex::new([Bucket::default(); BUCKETS]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn withdraw_all(budget: &RetryBudget) -> usize {
        std::iter::from_fn(|| budget.try_withdraw().then_some(()))
            .take(10_000)
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn allows_ratio_of_requests_plus_floor_and_no_more() {
        // Floor: 1/s over 10 s = 10 retries; ratio 0.5 of 40 requests = 20 more.
        let budget = RetryBudget::try_new(0.5, 1, Duration::from_secs(10)).unwrap();
        for _ in 0..40 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 30);
        assert!(!budget.try_withdraw());
        budget.deposit();
        budget.deposit();
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deposit_dated_by_arrival_counts_in_its_own_window() {
        let budget = RetryBudget::try_new(1.0, 0, Duration::from_secs(10)).unwrap();
        let early = Instant::now();
        tokio::time::advance(Duration::from_secs(6)).await;
        budget.deposit();
        // Arrived 6 s ago: counts, and ages out 6 s before the one made now.
        budget.deposit_at(early);
        assert_eq!(withdraw_all(&budget), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        budget.deposit();
        budget.deposit();
        assert_eq!(
            withdraw_all(&budget),
            1,
            "the early deposit left the window"
        );
        // A deposit dated a whole window back does not erase the newer bucket it maps to.
        budget.deposit_at(Instant::now() - Duration::from_secs(10));
        assert_eq!(withdraw_all(&budget), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refills_as_the_window_slides() {
        let budget = RetryBudget::try_new(1.0, 0, Duration::from_secs(10)).unwrap();
        for _ in 0..5 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..3 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 8);
        // 5 s later the first five deposits slide out, and the withdrawals made with
        // them are still in the window (they were made at 5 s): 3 - 8 < 0.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!budget.try_withdraw());
        // Once the withdrawals at 5 s slide out too, nothing is left in the window.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!budget.try_withdraw());
        budget.deposit();
        budget.deposit();
        assert_eq!(withdraw_all(&budget), 2);
        // A whole idle window later, everything has expired.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!budget.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn floor_alone_allows_min_per_second_times_window() {
        let budget = RetryBudget::try_new(0.2, 2, Duration::from_secs(10)).unwrap();
        assert_eq!(withdraw_all(&budget), 20);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(withdraw_all(&budget), 20);
    }

    #[test]
    fn rejects_nonsense() {
        let err = |r, w| RetryBudget::try_new(r, 1, w).unwrap_err().to_string();
        assert!(err(-0.1, Duration::from_secs(10)).contains("ratio"));
        assert!(err(f64::NAN, Duration::from_secs(10)).contains("ratio"));
        assert!(err(0.2, Duration::ZERO).contains("window"));
    }
}
