//! The rolling window a failure rate is measured over.
//!
//! The window is cut into [`BUCKETS`] buckets of equal width, each counting the calls
//! and failures that ended in it. A bucket is reused (and zeroed) when time comes round
//! to it again, so memory is fixed and a call costs one bucket update. The window covers
//! the current bucket and the nine before it: between 90% and 100% of its length,
//! depending on where in the current bucket `now` falls.

use std::time::Duration;

use tokio::time::Instant;

/// How many buckets a window is cut into.
const BUCKETS: usize = 10;

/// Calls and failures over the last `window`, in [`BUCKETS`] buckets.
#[derive(Debug, Clone)]
pub(super) struct RollingWindow {
    /// Bucket indexes count bucket widths from here.
    origin: Instant,
    /// The window's length divided by [`BUCKETS`] (at least 1 ns).
    width: Duration,
    /// Indexed by `bucket index % BUCKETS`.
    buckets: [Bucket; BUCKETS],
}

/// One slice of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket width since `origin` these counts belong to.
    index: u64,
    requests: u32,
    failures: u32,
}

/// What a window holds at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Totals {
    /// Calls that ended within the window.
    pub requests: u64,
    /// Of those, failures.
    pub failures: u64,
}

impl Totals {
    /// The fraction of calls that failed, `None` for an empty window.
    pub fn failure_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.failures as f64 / self.requests as f64)
    }
}

impl RollingWindow {
    /// An empty window of length `window`, starting at `now`.
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            origin: now,
            width: (window / BUCKETS as u32).max(Duration::from_nanos(1)),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    /// Counts one call ending at `now`.
    pub fn record(&mut self, failed: bool, now: Instant) {
        let index = self.index(now);
        let bucket = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                ..Bucket::default()
            };
        }
        bucket.requests = bucket.requests.saturating_add(1);
        bucket.failures = bucket.failures.saturating_add(u32::from(failed));
    }

    /// The calls within the window at `now`.
    pub fn totals(&self, now: Instant) -> Totals {
        let current = self.index(now);
        let oldest = current.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|bucket| (oldest..=current).contains(&bucket.index))
            .fold(Totals::default(), |totals, bucket| Totals {
                requests: totals.requests + u64::from(bucket.requests),
                failures: totals.failures + u64::from(bucket.failures),
            })
    }

    /// Forgets every call.
    pub fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }

    /// The bucket `now` falls in, counted from `origin`.
    fn index(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.width.as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_age_out_one_bucket_at_a_time() {
        let start = Instant::now();
        let mut window = RollingWindow::new(Duration::from_secs(10), start);
        window.record(true, start);
        window.record(false, start + Duration::from_millis(500));
        let at = |secs: u64| start + Duration::from_secs(secs);
        window.record(true, at(5));
        assert_eq!(
            window.totals(at(5)),
            Totals {
                requests: 3,
                failures: 2
            }
        );
        // The first bucket [0s, 1s) is still in the window at 9.999s, gone at 10s.
        assert_eq!(window.totals(at(10) - Duration::from_millis(1)).requests, 3);
        assert_eq!(
            window.totals(at(10)),
            Totals {
                requests: 1,
                failures: 1
            }
        );
        assert_eq!(window.totals(at(15)), Totals::default());
        assert_eq!(window.totals(at(15)).failure_rate(), None);
    }

    #[test]
    fn a_reused_bucket_starts_from_zero() {
        let start = Instant::now();
        let mut window = RollingWindow::new(Duration::from_secs(10), start);
        window.record(true, start);
        // Same slot (index 10 % 10 == 0), a window later.
        let later = start + Duration::from_secs(10);
        window.record(false, later);
        assert_eq!(
            window.totals(later),
            Totals {
                requests: 1,
                failures: 0
            }
        );
        assert_eq!(window.totals(later).failure_rate(), Some(0.0));
        window.clear();
        assert_eq!(window.totals(later), Totals::default());
    }
}
