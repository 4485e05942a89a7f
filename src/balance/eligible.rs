//! Which endpoints one pick may choose from: readiness, the retry's avoid list, and
//! panic mode.
//!
//! Every pick first takes a census of the snapshot (one pass, three relaxed loads per
//! endpoint) and settles on the first non-empty tier:
//!
//! 1. ready endpoints not in `avoid`;
//! 2. ready endpoints (avoidance is a preference: a retry may go back to the endpoint
//!    that failed when nothing else is ready);
//! 3. nothing: the call fails fast (`NoHealthyEndpoint`).
//!
//! **Panic mode.** When some endpoints are ready but fewer than `panic_threshold`
//! percent of them, the few ready ones would take the whole load and likely fall over
//! too, and that many failing checks at once is as likely a problem of the checks as of
//! the endpoints. So the pick ignores readiness and balances over every endpoint (not in
//! `avoid`, if any is left), as Envoy does. A threshold of 0 disables panic mode.
//!
//! NOTE: unlike Envoy, panic mode does not apply when *no* endpoint is ready: then the
//! call fails fast, so that an open breaker on every endpoint means "stop sending", a
//! fallback can answer (`no_endpoint`), and the design's "when every endpoint is
//! unavailable, the call fails fast" holds. Panic mode protects the last ready
//! endpoints; it does not send to endpoints every mechanism holds out.
//!
//! NOTE: the census is O(endpoints) per pick. Readiness flags are plain atomics their
//! owners set directly, so a ready count cannot be kept without changing their API; for
//! the tens to hundreds of endpoints a sidecar balances over, the pass costs less than
//! the allocation-free pick it precedes.

use std::net::SocketAddr;
use std::sync::Arc;

use super::Endpoint;

/// A predicate over endpoints, fixed for one pick.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Eligible<'a> {
    /// Take endpoints held out too (panic mode).
    ignore_readiness: bool,
    /// Endpoints not to take; empty once avoidance gave way.
    avoid: &'a [SocketAddr],
}

impl Eligible<'_> {
    /// Whether the pick may take `endpoint`.
    pub fn admits(&self, endpoint: &Endpoint) -> bool {
        (self.ignore_readiness || endpoint.is_ready()) && !self.avoid.contains(&endpoint.addr)
    }
}

/// What one pick chooses from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Choice<'a> {
    /// The predicate.
    pub eligible: Eligible<'a>,
    /// Endpoints it admitted during the census (at least 1).
    pub count: usize,
    /// Their total weight (at least `count`: weights are at least 1).
    pub weight: u64,
    /// Whether this pick is in panic mode.
    pub panic: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    count: usize,
    weight: u64,
}

impl Tally {
    fn add(&mut self, weight: u64) {
        self.count += 1;
        self.weight += weight;
    }
}

/// The census of `endpoints` for a pick avoiding `avoid`, or `None` when the pick must
/// fail (no endpoint, or none ready and panic mode does not apply).
pub(crate) fn choose<'a>(
    endpoints: &[Arc<Endpoint>],
    avoid: &'a [SocketAddr],
    panic_threshold: u8,
) -> Option<Choice<'a>> {
    let mut ready = Tally::default();
    let mut ready_kept = Tally::default();
    let mut kept = Tally::default();
    let mut all = Tally::default();
    for endpoint in endpoints {
        let weight = u64::from(endpoint.weight());
        let is_kept = avoid.is_empty() || !avoid.contains(&endpoint.addr);
        all.add(weight);
        if is_kept {
            kept.add(weight);
        }
        if endpoint.is_ready() {
            ready.add(weight);
            if is_kept {
                ready_kept.add(weight);
            }
        }
    }
    let choice = |ignore_readiness, avoid, tally: Tally, panic| Choice {
        eligible: Eligible {
            ignore_readiness,
            avoid,
        },
        count: tally.count,
        weight: tally.weight,
        panic,
    };
    if ready.count == 0 {
        return None;
    }
    let panic = ready.count * 100 < usize::from(panic_threshold) * all.count;
    Some(match (panic, ready_kept.count, kept.count) {
        (true, _, 0) => choice(true, &[], all, true),
        (true, _, _) => choice(true, avoid, kept, true),
        (false, 0, _) => choice(false, &[], ready, false),
        (false, _, _) => choice(false, avoid, ready_kept, false),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn endpoints(n: u16) -> Vec<Arc<Endpoint>> {
        (1..=n)
            .map(|port| Arc::new(Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))))
            .collect()
    }

    fn hold_out(endpoints: &[Arc<Endpoint>], ports: &[u16]) {
        for endpoint in endpoints {
            if ports.contains(&endpoint.addr.port()) {
                endpoint.readiness.unhealthy.store(true, Ordering::Relaxed);
            }
        }
    }

    fn admitted(endpoints: &[Arc<Endpoint>], choice: &Choice<'_>) -> Vec<u16> {
        endpoints
            .iter()
            .filter(|e| choice.eligible.admits(e))
            .map(|e| e.addr.port())
            .collect()
    }

    #[test]
    fn panic_starts_below_the_threshold_and_not_at_it() {
        let set = endpoints(4);
        hold_out(&set, &[1, 2]);
        let at_half = choose(&set, &[], 50).unwrap();
        assert!(!at_half.panic);
        assert_eq!(admitted(&set, &at_half), [3, 4]);

        hold_out(&set, &[3]);
        let below = choose(&set, &[], 50).unwrap();
        assert!(below.panic);
        assert_eq!(admitted(&set, &below), [1, 2, 3, 4]);
        assert_eq!((below.count, below.weight), (4, 4));

        let disabled = choose(&set, &[], 0).unwrap();
        assert!(!disabled.panic);
        assert_eq!(admitted(&set, &disabled), [4]);

        let everything = choose(&set, &[], 100).unwrap();
        assert!(everything.panic);
    }

    #[test]
    fn nothing_ready_fails_fast_even_in_panic_mode() {
        let set = endpoints(3);
        hold_out(&set, &[1, 2, 3]);
        assert!(choose(&set, &[], 50).is_none());
        assert!(choose(&set, &[], 100).is_none());
        assert!(choose(&[], &[], 50).is_none());
    }

    #[test]
    fn avoidance_is_a_preference_in_and_out_of_panic() {
        let set = endpoints(4);
        let two = [SocketAddr::from(([127, 0, 0, 1], 2))];
        let two_three = [two[0], SocketAddr::from(([127, 0, 0, 1], 3))];
        let choice = choose(&set, &two, 50).unwrap();
        assert_eq!(admitted(&set, &choice), [1, 3, 4]);

        hold_out(&set, &[1, 4]);
        let only_avoided_ready = choose(&set, &two_three, 0).unwrap();
        assert_eq!(admitted(&set, &only_avoided_ready), [2, 3]);

        hold_out(&set, &[3]);
        let panic = choose(&set, &two, 50).unwrap();
        assert!(panic.panic);
        assert_eq!(admitted(&set, &panic), [1, 3, 4]);
    }
}
