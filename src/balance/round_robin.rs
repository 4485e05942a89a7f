//! Smooth weighted round robin over a schedule built once per snapshot.
//!
//! The schedule lists endpoint indexes so that each appears in proportion to its weight,
//! spread out rather than in runs (weights 5, 1, 1 give `A A A B C A A`, not
//! `A A A A A B C`): slot `k` of an endpoint of weight `w` is due at `(k + ½) / w`, and
//! slots are taken in order of due time (stride scheduling). Picks walk the schedule
//! with one shared atomic cursor, so concurrent picks never lock.
//!
//! An endpoint that may not be taken is skipped and its slot is consumed, so the next
//! picks go on in schedule order and shares among the rest stay exact (skipping by
//! walking alone would hand every skipped slot to the endpoint after it).

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::eligible::Choice;
use super::Endpoint;

/// The longest schedule built; larger weight sums are scaled down to fit.
pub(crate) const MAX_SLOTS: u64 = 1 << 16;

/// Endpoint indexes in the order round robin visits them.
#[derive(Debug)]
pub(crate) struct Schedule {
    /// Never empty unless the set is.
    slots: Box<[u32]>,
}

/// One endpoint's next slot, ordered by due time `(2k + 1) / 2w`, then index.
#[derive(Debug, PartialEq, Eq)]
struct Due {
    numerator: u64,
    denominator: u64,
    index: u32,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        let this = u128::from(self.numerator) * u128::from(other.denominator);
        let that = u128::from(other.numerator) * u128::from(self.denominator);
        this.cmp(&that).then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Schedule {
    /// The schedule for endpoints of these weights (already reduced to fit).
    pub fn build(weights: &[u32]) -> Self {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut due: BinaryHeap<Reverse<Due>> = weights
            .iter()
            .zip(0u32..)
            .map(|(&weight, index)| {
                Reverse(Due {
                    numerator: 1,
                    denominator: 2 * u64::from(weight),
                    index,
                })
            })
            .collect();
        let mut slots = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            let Some(Reverse(mut next)) = due.pop() else {
                break;
            };
            slots.push(next.index);
            next.numerator += 2;
            due.push(Reverse(next));
        }
        Self {
            slots: slots.into_boxed_slice(),
        }
    }

    /// The next eligible endpoint in schedule order, or `None` when none was found in
    /// one pass over `endpoints.len() + 64` slots (the caller then picks by weight).
    pub fn pick<'e>(
        &self,
        endpoints: &'e [Arc<Endpoint>],
        choice: &Choice<'_>,
        cursor: &AtomicUsize,
    ) -> Option<&'e Arc<Endpoint>> {
        let len = self.slots.len();
        if len == 0 {
            return None;
        }
        let start = cursor.fetch_add(1, Ordering::Relaxed);
        let limit = len.min(endpoints.len() + 64);
        for skipped in 0..limit {
            let slot = self.slots[start.wrapping_add(skipped) % len];
            let Some(endpoint) = endpoints.get(slot as usize) else {
                continue;
            };
            if choice.eligible.admits(endpoint) {
                if skipped > 0 {
                    cursor.fetch_add(skipped, Ordering::Relaxed);
                }
                return Some(endpoint);
            }
        }
        None
    }

    #[cfg(test)]
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_take_turns_in_order() {
        assert_eq!(Schedule::build(&[1, 1, 1]).slots(), [0, 1, 2]);
    }

    #[test]
    fn weights_are_spread_not_bunched() {
        assert_eq!(Schedule::build(&[5, 1, 1]).slots(), [0, 0, 0, 1, 2, 0, 0]);
        assert_eq!(Schedule::build(&[2, 1]).slots(), [0, 1, 0]);
        let slots = Schedule::build(&[3, 2]);
        assert_eq!(slots.slots(), [0, 1, 0, 1, 0]);
    }

    #[test]
    fn each_endpoint_appears_its_weight_times() {
        let weights = [7, 1, 3, 12];
        let schedule = Schedule::build(&weights);
        for (index, &weight) in weights.iter().enumerate() {
            let count = schedule
                .slots()
                .iter()
                .filter(|&&s| s as usize == index)
                .count();
            assert_eq!(count, weight as usize);
        }
    }
}
