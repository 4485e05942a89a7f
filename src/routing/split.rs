//! A weighted split of a route's requests over backends, optionally sticky: a caller's
//! hash key (the balancer's [`HashKey`]) picks the same backend while the weights stay.
//!
//! The legs are built once per config; a pick is one random number (or one hash of the
//! key) and a walk over the cumulative weights, without allocation. A weight change
//! arrives as a new config: requests already sent hold the old leg to the end.

use http::Request;

use crate::balance::HashKey;

/// A split that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// No backend at all.
    #[error("a split needs at least one backend")]
    Empty,
    /// Every weight is zero: no request could go anywhere.
    #[error("every backend weight is 0: at least one must be above 0")]
    AllZero,
    /// The weights do not fit the sum kept.
    #[error("the weights add up to more than {max}", max = u32::MAX)]
    TooLarge,
}

/// Requests spread over `legs` by weight.
#[derive(Debug, Clone)]
pub struct Split<S> {
    /// Each leg with the sum of the weights up to and including it; legs of weight 0
    /// are left out.
    legs: Vec<(u32, S)>,
    /// The sum of every weight.
    total: u32,
    /// The key that keeps a caller on one leg.
    sticky: Option<HashKey>,
}

impl<S> Split<S> {
    /// A split of `legs` (leg, weight), sticky by `sticky` when given.
    pub fn try_new(
        legs: impl IntoIterator<Item = (S, u32)>,
        sticky: Option<HashKey>,
    ) -> Result<Self, SplitError> {
        let mut total: u32 = 0;
        let mut kept = Vec::new();
        let mut any = false;
        for (leg, weight) in legs {
            any = true;
            if weight == 0 {
                continue;
            }
            total = total.checked_add(weight).ok_or(SplitError::TooLarge)?;
            kept.push((total, leg));
        }
        if !any {
            return Err(SplitError::Empty);
        }
        if total == 0 {
            return Err(SplitError::AllZero);
        }
        Ok(Self {
            legs: kept,
            total,
            sticky,
        })
    }

    /// The leg `request` goes to: by its sticky key when it carries one, else at random.
    pub fn pick<B>(&self, request: &Request<B>) -> &S {
        let point = match self.sticky.as_ref().and_then(|key| key.hash_of(request)) {
            Some(hash) => (hash % u64::from(self.total)) as u32,
            None => fastrand::u32(..self.total),
        };
        self.leg_at(point)
    }

    /// The leg whose share of `[0, total)` holds `point`.
    fn leg_at(&self, point: u32) -> &S {
        let at = self.legs.partition_point(|(upto, _)| *upto <= point);
        // `point < total`, and the last leg ends at `total`.
        &self.legs[at.min(self.legs.len() - 1)].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_share_the_points_and_zero_weights_get_none() {
        let split = Split::try_new([("a", 90), ("z", 0), ("b", 10)], None).unwrap();
        assert_eq!(*split.leg_at(0), "a");
        assert_eq!(*split.leg_at(89), "a");
        assert_eq!(*split.leg_at(90), "b");
        assert_eq!(*split.leg_at(99), "b");
        let request = Request::new(());
        let b = (0..10_000).filter(|_| *split.pick(&request) == "b").count();
        assert!((800..1200).contains(&b), "{b} of 10000 on the 10% leg");
    }

    #[test]
    fn a_sticky_key_keeps_a_caller_on_one_leg() {
        let key = HashKey::Header(http::HeaderName::from_static("x-user"));
        let split = Split::try_new([("a", 50), ("b", 50)], Some(key)).unwrap();
        for user in 0..100 {
            let request = Request::builder()
                .header("x-user", format!("user-{user}"))
                .body(())
                .unwrap();
            let first = *split.pick(&request);
            assert!((0..20).all(|_| *split.pick(&request) == first));
        }
    }

    #[test]
    fn refuses_splits_that_send_nowhere() {
        let none: [(&str, u32); 0] = [];
        assert_eq!(Split::try_new(none, None).unwrap_err(), SplitError::Empty);
        let zero = Split::try_new([("a", 0), ("b", 0)], None).unwrap_err();
        assert_eq!(zero, SplitError::AllZero);
        let large = Split::try_new([("a", u32::MAX), ("b", 1)], None).unwrap_err();
        assert_eq!(large, SplitError::TooLarge);
    }
}
