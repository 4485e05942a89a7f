//! The consumer's view of one watch: is what it serves fresh, and since when not.

use std::time::Instant;

use super::{DiscoveryError, Instance};

/// Tracks the items of one watch stream to tell how stale its endpoints are.
///
/// Feed it every item the stream yields. Endpoints are fresh from an `Ok` snapshot until
/// the next `Err`; from then they are stale (the last snapshot still serves) until the
/// next `Ok`.
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    /// When the last `Ok` snapshot arrived; `None` before the first.
    last_snapshot: Option<Instant>,
    /// When the current outage began; `None` while fresh.
    stale_since: Option<Instant>,
    /// The most recent error of the current outage.
    last_error: Option<DiscoveryError>,
}

impl Freshness {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one item of the stream, seen `now`.
    pub fn observe(&mut self, item: &Result<Vec<Instance>, DiscoveryError>, now: Instant) {
        match item {
            Ok(_) => {
                self.last_snapshot = Some(now);
                self.stale_since = None;
                self.last_error = None;
            }
            Err(error) => {
                self.stale_since.get_or_insert(now);
                self.last_error = Some(error.clone());
            }
        }
    }

    /// When the last snapshot arrived.
    pub fn last_snapshot(&self) -> Option<Instant> {
        self.last_snapshot
    }

    /// Since when the registry has been failing, if it is.
    pub fn stale_since(&self) -> Option<Instant> {
        self.stale_since
    }

    /// Why the registry is failing, if it is.
    pub fn last_error(&self) -> Option<&DiscoveryError> {
        self.last_error.as_ref()
    }

    /// Whether the endpoints come from a snapshot the registry can no longer confirm.
    pub fn is_stale(&self) -> bool {
        self.stale_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn stale_from_the_first_error_until_the_next_snapshot() {
        let start = Instant::now();
        let at = |s| start + Duration::from_secs(s);
        let mut freshness = Freshness::new();
        freshness.observe(&Ok(vec![]), at(0));
        assert!(!freshness.is_stale());
        let error = DiscoveryError::new("test", "down");
        freshness.observe(&Err(error.clone()), at(1));
        freshness.observe(&Err(error), at(2));
        assert_eq!(freshness.stale_since(), Some(at(1)));
        assert_eq!(freshness.last_snapshot(), Some(at(0)));
        assert!(freshness.last_error().is_some());
        freshness.observe(&Ok(vec![]), at(3));
        assert!(!freshness.is_stale());
        assert_eq!(freshness.last_snapshot(), Some(at(3)));
    }
}
