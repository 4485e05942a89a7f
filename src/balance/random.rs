//! Weighted random choice, and the weighted choice by a given number it is built on
//! (consistent hashing uses that as a stable last resort).

use std::sync::Arc;

use fastrand::Rng;

use super::eligible::Choice;
use super::Endpoint;

/// An eligible endpoint with probability proportional to its weight.
pub(crate) fn pick<'e>(
    endpoints: &'e [Arc<Endpoint>],
    choice: &Choice<'_>,
    rng: &mut Rng,
) -> Option<&'e Arc<Endpoint>> {
    nth_by_weight(endpoints, choice, rng.u64(..choice.weight))
}

/// The eligible endpoint whose share of the total weight covers `point`, taken modulo
/// that total. If readiness changed since the census, the last eligible one.
pub(crate) fn nth_by_weight<'e>(
    endpoints: &'e [Arc<Endpoint>],
    choice: &Choice<'_>,
    point: u64,
) -> Option<&'e Arc<Endpoint>> {
    let point = point % choice.weight.max(1);
    let mut below = 0u64;
    let mut last = None;
    for endpoint in endpoints {
        if !choice.eligible.admits(endpoint) {
            continue;
        }
        below += u64::from(endpoint.weight());
        if point < below {
            return Some(endpoint);
        }
        last = Some(endpoint);
    }
    last
}
