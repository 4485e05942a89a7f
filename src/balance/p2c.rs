//! Power of two choices: sample two distinct eligible endpoints uniformly, take the
//! cheaper. Both the peak-EWMA balancer and least-request use it; they differ in cost.
//!
//! Weights divide the cost, so an endpoint of weight 2 takes twice the load before it
//! looks as dear as one of weight 1.
//!
//! NOTE: at low concurrency that means the heavier of the two sampled endpoints wins
//! nearly every time (both have nothing in flight), so traffic shares follow weights
//! only once there is load to share; use round robin or random for exact proportions.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fastrand::Rng;
use tokio::time::Instant;

use super::eligible::Choice;
use super::ewma::EwmaParams;
use super::Endpoint;

/// The cheaper of two distinct eligible endpoints sampled with `rng`; ties go to the
/// first sampled, so they split evenly.
pub(crate) fn pick<'e>(
    endpoints: &'e [Arc<Endpoint>],
    choice: &Choice<'_>,
    rng: &mut Rng,
    cost: impl Fn(&Endpoint) -> f64,
) -> Option<&'e Arc<Endpoint>> {
    let (first, second) = if choice.count < 2 {
        (0, None)
    } else {
        let first = rng.usize(..choice.count);
        let second = rng.usize(..choice.count - 1);
        (first, Some(second + usize::from(second >= first)))
    };
    let mut a = None;
    let mut b = None;
    let eligible = endpoints.iter().filter(|e| choice.eligible.admits(e));
    for (rank, endpoint) in eligible.enumerate() {
        if rank == first {
            a = Some(endpoint);
        } else if Some(rank) == second {
            b = Some(endpoint);
        }
        if a.is_some() && (b.is_some() || second.is_none()) {
            break;
        }
    }
    match (a, b) {
        (Some(a), Some(b)) if cost(b) < cost(a) => Some(b),
        (a, b) => a.or(b),
    }
}

/// `(in_flight + 1) × RTT estimate / weight`, in nanoseconds; 0 for an endpoint never
/// measured and with nothing in flight.
///
/// That zero makes a new endpoint win its next pairing, so it is measured at once
/// rather than waiting until every known endpoint looks slower than `default_rtt`
/// (with sequential traffic that could be minutes). Once its first attempt is in flight
/// it costs `default_rtt` per attempt like any other, so a burst does not pile onto it
/// before it has answered once (Finagle's optimism, without its herd).
pub(crate) fn peak_ewma_cost(endpoint: &Endpoint, now: Instant, params: EwmaParams) -> f64 {
    let in_flight = endpoint.in_flight.load(Ordering::Relaxed);
    if in_flight == 0 && !endpoint.rtt.is_measured() {
        return 0.0;
    }
    let load = in_flight as f64 + 1.0;
    load * endpoint.rtt.cost_at(now, params) / f64::from(endpoint.weight())
}

/// `(in_flight + 1) / weight`.
pub(crate) fn least_request_cost(endpoint: &Endpoint) -> f64 {
    let load = endpoint.in_flight.load(Ordering::Relaxed) as f64 + 1.0;
    load / f64::from(endpoint.weight())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::super::eligible::choose;
    use super::*;

    fn params() -> EwmaParams {
        EwmaParams::new(Duration::from_secs(10), Duration::from_millis(30))
    }

    /// Endpoints on ports 1.. with these RTT estimates (ms), in-flight counts and weights.
    fn endpoints(specs: &[(u64, usize, u32)]) -> Vec<Arc<Endpoint>> {
        specs
            .iter()
            .zip(1u16..)
            .map(|(&(rtt_ms, in_flight, weight), port)| {
                let endpoint =
                    Endpoint::with_weight(SocketAddr::from(([127, 0, 0, 1], port)), weight);
                endpoint.rtt.record(Duration::from_millis(rtt_ms), params());
                endpoint.in_flight.store(in_flight, Ordering::Relaxed);
                Arc::new(endpoint)
            })
            .collect()
    }

    /// How often each endpoint wins `rounds` peak-EWMA picks with a seeded RNG.
    fn wins(endpoints: &[Arc<Endpoint>], rounds: usize) -> Vec<usize> {
        let mut rng = Rng::with_seed(7);
        let choice = choose(endpoints, &[], 50).unwrap();
        let now = Instant::now();
        let mut wins = vec![0; endpoints.len()];
        for _ in 0..rounds {
            let picked = pick(endpoints, &choice, &mut rng, |e| {
                peak_ewma_cost(e, now, params())
            })
            .unwrap();
            wins[usize::from(picked.addr.port()) - 1] += 1;
        }
        wins
    }

    #[tokio::test(start_paused = true)]
    async fn of_two_the_cheaper_always_wins() {
        // (1 + 1) × 10 ms = 20 against (2 + 1) × 4 ms = 12.
        assert_eq!(wins(&endpoints(&[(10, 1, 1), (4, 2, 1)]), 100), [0, 100]);
        // With weight 2, (1 + 1) × 10 ms / 2 = 10 against 12.
        assert_eq!(wins(&endpoints(&[(10, 1, 2), (4, 2, 1)]), 100), [100, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_dearest_never_wins_and_the_cheapest_wins_every_pair_it_is_in() {
        let set = endpoints(&[(5, 0, 1), (1, 0, 1), (20, 0, 1)]);
        let wins = wins(&set, 3000);
        assert_eq!(wins[2], 0, "the dearest loses every pair: {wins:?}");
        // The cheapest is in two of the three pairs: 2000 in expectation.
        assert!((1800..=2200).contains(&wins[1]), "{wins:?}");
        assert_eq!(wins[0] + wins[1], 3000);
    }

    #[tokio::test(start_paused = true)]
    async fn ties_split_and_one_candidate_is_taken() {
        let set = endpoints(&[(3, 0, 1), (3, 0, 1)]);
        let split = wins(&set, 1000);
        assert!((400..=600).contains(&split[0]), "{split:?}");

        let one = endpoints(&[(3, 0, 1)]);
        assert_eq!(wins(&one, 10), [10]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unmeasured_endpoint_is_tried_once_then_costs_the_default() {
        let known = endpoints(&[(1, 0, 1)]);
        let new = Arc::new(Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 2))));
        let now = Instant::now();
        assert_eq!(peak_ewma_cost(&new, now, params()), 0.0);
        assert_eq!(peak_ewma_cost(&known[0], now, params()), 1e6);
        new.in_flight.store(1, Ordering::Relaxed);
        assert_eq!(peak_ewma_cost(&new, now, params()), 2.0 * 30e6);
    }

    #[test]
    fn least_request_divides_load_by_weight() {
        let set = endpoints(&[(1, 3, 1), (1, 5, 2)]);
        assert_eq!(least_request_cost(&set[0]), 4.0);
        assert_eq!(least_request_cost(&set[1]), 3.0);
    }
}
