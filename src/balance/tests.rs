//! Tests of [`EndpointSet`] as a whole: every balancer through `pick_for`.

use std::collections::HashMap;
use std::time::Duration;

use http::HeaderName;
use prometheus_client::registry::Registry as MetricsRegistry;

use super::hash::{hash64, KEY_SEED};
use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn instance(port: u16) -> Instance {
    Instance::new(addr(port))
}

fn weighted(port: u16, weight: u32) -> Instance {
    Instance {
        weight,
        ..instance(port)
    }
}

fn set_of(balancer: Balancer, panic_threshold: u8, instances: &[Instance]) -> EndpointSet {
    let set = EndpointSet::with_config(BalancerConfig::try_new(balancer, panic_threshold).unwrap());
    set.update(instances);
    set
}

fn ports(count: u16) -> Vec<Instance> {
    (1..=count).map(instance).collect()
}

fn endpoint(set: &EndpointSet, port: u16) -> Arc<Endpoint> {
    set.snapshot()
        .iter()
        .find(|e| e.addr.port() == port)
        .cloned()
        .unwrap()
}

/// Picks per port over `rounds` picks without a key.
fn counts(set: &EndpointSet, rounds: usize) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for _ in 0..rounds {
        *counts.entry(set.pick().unwrap().addr.port()).or_default() += 1;
    }
    counts
}

fn sorted(counts: HashMap<u16, usize>) -> Vec<(u16, usize)> {
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    counts
}

// Round robin.

#[test]
fn round_robin_visits_every_endpoint_evenly() {
    let set = set_of(Balancer::RoundRobin, 50, &ports(3));
    let order: Vec<u16> = (0..6).map(|_| set.pick().unwrap().addr.port()).collect();
    assert_eq!(order, [1, 2, 3, 1, 2, 3]);
    assert_eq!(sorted(counts(&set, 300)), [(1, 100), (2, 100), (3, 100)]);
}

#[test]
fn weighted_round_robin_is_exact_over_each_cycle() {
    let set = set_of(
        Balancer::RoundRobin,
        50,
        &[weighted(1, 5), weighted(2, 1), weighted(3, 2)],
    );
    let cycle: Vec<u16> = (0..8).map(|_| set.pick().unwrap().addr.port()).collect();
    assert_eq!(cycle, [1, 3, 1, 1, 2, 1, 3, 1]);
    assert_eq!(sorted(counts(&set, 800)), [(1, 500), (2, 100), (3, 200)]);
}

#[test]
fn round_robin_skips_endpoints_held_out_and_stays_even() {
    let set = set_of(Balancer::RoundRobin, 0, &ports(3));
    endpoint(&set, 1)
        .readiness
        .ejected
        .store(true, Ordering::Relaxed);
    assert_eq!(sorted(counts(&set, 300)), [(2, 150), (3, 150)]);
}

#[test]
fn held_out_endpoints_are_skipped_and_avoidance_is_a_preference() {
    let set = set_of(Balancer::RoundRobin, 0, &ports(2));
    let first = endpoint(&set, 1);
    first.readiness.ejected.store(true, Ordering::Relaxed);
    for _ in 0..4 {
        assert_eq!(set.pick().unwrap().addr.port(), 2);
    }
    first.readiness.ejected.store(false, Ordering::Relaxed);
    for _ in 0..4 {
        assert_eq!(set.pick_for(None, &[addr(2)]).unwrap().addr.port(), 1);
    }
    first.readiness.breaker_open.store(true, Ordering::Relaxed);
    assert_eq!(set.pick_for(None, &[addr(2)]).unwrap().addr.port(), 2);
    endpoint(&set, 2)
        .readiness
        .unhealthy
        .store(true, Ordering::Relaxed);
    assert!(set.pick().is_none());
}

// Panic mode.

fn panic_metrics(registry: &MetricsRegistry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

#[test]
fn below_the_panic_threshold_picks_spread_over_every_endpoint() {
    let mut registry = MetricsRegistry::with_prefix("remora");
    let metrics = BalancerMetrics::register(&mut registry);
    let set = EndpointSet::with_config(BalancerConfig::try_new(Balancer::RoundRobin, 50).unwrap())
        .with_metrics("users".into(), &metrics);
    set.update(&ports(4));
    assert!(panic_metrics(&registry).contains(r#"remora_balancer_panic{service="users"} 0"#));

    // Two of four ready: 50% is not below 50%.
    for port in [1, 2] {
        endpoint(&set, port)
            .readiness
            .unhealthy
            .store(true, Ordering::Relaxed);
    }
    assert_eq!(sorted(counts(&set, 100)), [(3, 50), (4, 50)]);
    assert!(!set.in_panic());

    // One of four: panic, every endpoint takes its turn.
    endpoint(&set, 3)
        .readiness
        .breaker_open
        .store(true, Ordering::Relaxed);
    assert_eq!(
        sorted(counts(&set, 400)),
        [(1, 100), (2, 100), (3, 100), (4, 100)]
    );
    assert!(set.in_panic());
    let text = panic_metrics(&registry);
    assert!(
        text.contains(r#"remora_balancer_panic{service="users"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"remora_balancer_panic_entered_total{service="users"} 1"#));

    // Back to two of four: out of panic, counted once.
    endpoint(&set, 3)
        .readiness
        .breaker_open
        .store(false, Ordering::Relaxed);
    assert_eq!(sorted(counts(&set, 100)), [(3, 50), (4, 50)]);
    assert!(!set.in_panic());
    let text = panic_metrics(&registry);
    assert!(
        text.contains(r#"remora_balancer_panic{service="users"} 0"#),
        "{text}"
    );
    assert!(text.contains(r#"remora_balancer_panic_entered_total{service="users"} 1"#));
}

#[test]
fn nothing_ready_fails_fast_and_a_zero_threshold_disables_panic() {
    let set = set_of(Balancer::RoundRobin, 50, &ports(4));
    for port in 1..=4 {
        endpoint(&set, port)
            .readiness
            .unhealthy
            .store(true, Ordering::Relaxed);
    }
    assert!(set.pick().is_none(), "no endpoint ready: fail fast");
    assert!(!set.in_panic());

    let strict = set_of(Balancer::RoundRobin, 0, &ports(4));
    for port in 1..=3 {
        endpoint(&strict, port)
            .readiness
            .unhealthy
            .store(true, Ordering::Relaxed);
    }
    assert_eq!(sorted(counts(&strict, 10)), [(4, 10)]);
    assert!(!strict.in_panic());
}

#[test]
fn panic_mode_applies_to_every_balancer() {
    let balancers = [
        Balancer::default(),
        Balancer::LeastRequest,
        Balancer::Random,
        Balancer::ConsistentHash {
            key: HashKey::ClientIp,
            algorithm: HashAlgorithm::ring(),
        },
    ];
    for balancer in balancers {
        let set = set_of(balancer.clone(), 50, &ports(4));
        for port in 1..=3 {
            endpoint(&set, port)
                .readiness
                .unhealthy
                .store(true, Ordering::Relaxed);
        }
        // Held-out endpoints take picks. (P2C's choice among equal unmeasured
        // endpoints is decided by their age, so not every one need win.)
        let picked = counts(&set, 400);
        assert!(picked.len() >= 3, "{balancer:?}: {picked:?}");
        assert!(set.in_panic());
    }
}

#[test]
fn the_empty_set_picks_nothing() {
    for balancer in [Balancer::default(), Balancer::RoundRobin, Balancer::Random] {
        let set = set_of(balancer, 50, &[]);
        assert!(set.pick().is_none());
        assert!(set.pick_for(Some(7), &[addr(1)]).is_none());
    }
}

// P2C and least request through the set.

#[tokio::test(start_paused = true)]
async fn p2c_sends_to_the_faster_endpoint() {
    let set = set_of(Balancer::default(), 50, &ports(2));
    let params = set.ewma;
    endpoint(&set, 1)
        .rtt
        .record(Duration::from_millis(20), params);
    endpoint(&set, 2)
        .rtt
        .record(Duration::from_millis(2), params);
    assert_eq!(sorted(counts(&set, 50)), [(2, 50)]);

    // Nine in flight on the fast one: (9 + 1) × 2 ms = 20 ms ties; ten make it dearer.
    endpoint(&set, 2).in_flight.store(10, Ordering::Relaxed);
    assert_eq!(sorted(counts(&set, 50)), [(1, 50)]);
}

#[test]
fn least_request_goes_where_fewer_wait() {
    let set = set_of(Balancer::LeastRequest, 50, &ports(2));
    endpoint(&set, 1).in_flight.store(3, Ordering::Relaxed);
    endpoint(&set, 2).in_flight.store(1, Ordering::Relaxed);
    assert_eq!(sorted(counts(&set, 20)), [(2, 20)]);
    // Weight 3 divides: (3 + 1) / 3 < (1 + 1) / 1.
    set.update(&[weighted(1, 3), instance(2)]);
    assert_eq!(sorted(counts(&set, 20)), [(1, 20)]);
}

#[test]
fn random_follows_weights() {
    let set = set_of(Balancer::Random, 50, &[weighted(1, 1), weighted(2, 3)]);
    let counts = counts(&set, 10_000);
    // 7 500 expected, standard deviation about 43.
    assert!((7_200..=7_800).contains(&counts[&2]), "{counts:?}");
}

// The attempt guard.

#[tokio::test(start_paused = true)]
async fn an_attempt_counts_in_flight_until_it_ends_and_records_its_rtt() {
    let set = set_of(Balancer::default(), 50, &ports(1));
    let one = endpoint(&set, 1);
    let answered = set.start(&one);
    let abandoned = set.start(&one);
    assert_eq!(one.in_flight.load(Ordering::Relaxed), 2);
    tokio::time::advance(Duration::from_millis(4)).await;
    answered.finish(true);
    assert_eq!(one.in_flight.load(Ordering::Relaxed), 1);
    assert_eq!(set.views()[0].ewma_ms, 4.0);

    tokio::time::advance(Duration::from_millis(6)).await;
    drop(abandoned);
    assert_eq!(one.in_flight.load(Ordering::Relaxed), 0);
    assert_eq!(
        set.views()[0].ewma_ms,
        10.0,
        "abandoned after 10 ms: a peak"
    );

    let failed = set.start(&one);
    failed.finish(false);
    assert_eq!(
        set.views()[0].ewma_ms,
        30.0,
        "a failure counts as the default RTT here"
    );
}

// Consistent hashing.

fn ring() -> Balancer {
    Balancer::ConsistentHash {
        key: HashKey::Header(HeaderName::from_static("x-user")),
        algorithm: HashAlgorithm::ring(),
    }
}

fn maglev() -> Balancer {
    Balancer::ConsistentHash {
        key: HashKey::Header(HeaderName::from_static("x-user")),
        algorithm: HashAlgorithm::maglev(),
    }
}

/// Where each of `keys` goes.
fn owners(set: &EndpointSet, keys: u32) -> Vec<u16> {
    (0..keys)
        .map(|k| {
            let key = hash64(&[&k.to_le_bytes()], KEY_SEED);
            set.pick_for(Some(key), &[]).unwrap().addr.port()
        })
        .collect()
}

fn moved(before: &[u16], after: &[u16]) -> usize {
    before.iter().zip(after).filter(|(a, b)| a != b).count()
}

#[test]
fn the_key_comes_from_the_request_only_for_consistent_hashing() {
    let request = Request::builder()
        .header("x-user", "alice")
        .body(())
        .unwrap();
    let hashed = set_of(ring(), 50, &ports(3));
    assert_eq!(
        hashed.hash_key(&request),
        Some(hash64(&[b"alice"], KEY_SEED))
    );
    let plain = set_of(Balancer::default(), 50, &ports(3));
    assert_eq!(plain.hash_key(&request), None);
}

#[test]
fn the_same_key_goes_to_the_same_endpoint_in_every_sidecar() {
    for balancer in [ring(), maglev()] {
        let one = set_of(balancer.clone(), 50, &ports(10));
        let first = owners(&one, 1_000);
        assert_eq!(
            owners(&one, 1_000),
            first,
            "{balancer:?}: stable over picks"
        );
        // Another sidecar, endpoints listed in another order.
        let mut reversed = ports(10);
        reversed.reverse();
        let other = set_of(balancer.clone(), 50, &reversed);
        assert_eq!(
            owners(&other, 1_000),
            first,
            "{balancer:?}: order independent"
        );
        // Every endpoint owns some keys.
        let mut used = first.clone();
        used.sort();
        used.dedup();
        assert_eq!(used.len(), 10, "{balancer:?}");
    }
}

#[test]
fn adding_an_endpoint_moves_about_its_share_of_keys() {
    const KEYS: u32 = 10_000;
    for balancer in [ring(), maglev()] {
        let set = set_of(balancer.clone(), 50, &ports(10));
        let before = owners(&set, KEYS);
        set.update(&ports(11));
        let after = owners(&set, KEYS);
        // 1/11 is 909 keys; allow 3 points of the keys on top.
        let moved_keys = moved(&before, &after);
        assert!(moved_keys <= 909 + 300, "{balancer:?}: {moved_keys} moved");
        assert!(moved_keys >= 600, "{balancer:?}: {moved_keys} moved");
        // And every moved key moved to the new endpoint.
        let elsewhere = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b && **b != 11)
            .count();
        let limit = if balancer == ring() {
            0
        } else {
            KEYS as usize / 100
        };
        assert!(
            elsewhere <= limit,
            "{balancer:?}: {elsewhere} moved elsewhere"
        );
    }
}

#[test]
fn removing_an_endpoint_moves_only_its_keys() {
    const KEYS: u32 = 10_000;
    for balancer in [ring(), maglev()] {
        let set = set_of(balancer.clone(), 50, &ports(10));
        let before = owners(&set, KEYS);
        let remaining: Vec<Instance> = ports(10)
            .into_iter()
            .filter(|i| i.addr.port() != 4)
            .collect();
        set.update(&remaining);
        let after = owners(&set, KEYS);
        let others_moved = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b && **a != 4)
            .count();
        // A ring moves nothing else; Maglev moves a few entries of others (< 1%).
        let limit = if balancer == ring() {
            0
        } else {
            KEYS as usize / 100
        };
        assert!(others_moved <= limit, "{balancer:?}: {others_moved}");
        assert!(!after.contains(&4));
    }
}

#[test]
fn hash_shares_follow_weights() {
    const KEYS: u32 = 20_000;
    for balancer in [ring(), maglev()] {
        let set = set_of(
            balancer.clone(),
            50,
            &[weighted(1, 1), weighted(2, 2), weighted(3, 1)],
        );
        let owners = owners(&set, KEYS);
        let share = |port| owners.iter().filter(|&&p| p == port).count() as f64 / KEYS as f64;
        assert!(
            (0.45..=0.55).contains(&share(2)),
            "{balancer:?}: {}",
            share(2)
        );
        assert!(
            (0.20..=0.30).contains(&share(1)),
            "{balancer:?}: {}",
            share(1)
        );
        assert!(
            (0.20..=0.30).contains(&share(3)),
            "{balancer:?}: {}",
            share(3)
        );
    }
}

#[test]
fn keys_of_a_held_out_endpoint_walk_on_stably_and_spread() {
    const KEYS: u32 = 2_000;
    for balancer in [ring(), maglev()] {
        let set = set_of(balancer.clone(), 0, &ports(5));
        let before = owners(&set, KEYS);
        endpoint(&set, 2)
            .readiness
            .ejected
            .store(true, Ordering::Relaxed);
        let during = owners(&set, KEYS);
        assert_eq!(owners(&set, KEYS), during, "{balancer:?}: stable");
        assert!(!during.contains(&2));
        // Only its keys moved, and they spread over every other endpoint.
        let mut heirs: Vec<u16> = before
            .iter()
            .zip(&during)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| {
                assert_eq!(*a, 2, "{balancer:?}");
                *b
            })
            .collect();
        heirs.sort();
        heirs.dedup();
        assert_eq!(heirs, [1, 3, 4, 5], "{balancer:?}");
        // Back in: the keys come home.
        endpoint(&set, 2)
            .readiness
            .ejected
            .store(false, Ordering::Relaxed);
        assert_eq!(owners(&set, KEYS), before, "{balancer:?}");
    }
}

#[test]
fn a_retry_of_a_hashed_key_goes_elsewhere_and_without_a_key_picks_at_random() {
    let set = set_of(maglev(), 50, &ports(3));
    let owner = set.pick_for(Some(42), &[]).unwrap().addr;
    let retry = set.pick_for(Some(42), &[owner]).unwrap().addr;
    assert_ne!(retry, owner);
    assert_eq!(set.pick_for(Some(42), &[owner]).unwrap().addr, retry);
    let keyless = counts(&set, 300);
    assert_eq!(keyless.len(), 3, "{keyless:?}");
}

// Updates and views.

#[test]
fn updates_keep_counters_and_take_new_weights() {
    let set = EndpointSet::new();
    assert!(set.pick().is_none());
    set.update(&[instance(1)]);
    let first = set.pick().unwrap();
    first.in_flight.store(7, Ordering::Relaxed);
    first.readiness.ejected.store(true, Ordering::Relaxed);
    set.update(&[weighted(1, 4), instance(2), instance(1)]);
    let snapshot = set.snapshot();
    assert_eq!(snapshot.len(), 2, "duplicates are dropped");
    assert!(Arc::ptr_eq(&snapshot[0], &first));
    assert_eq!(snapshot[0].in_flight.load(Ordering::Relaxed), 7);
    assert_eq!(snapshot[0].weight(), 4);
    assert!(!snapshot[0].is_ready());
}

#[test]
fn weight_zero_counts_as_one() {
    let set = set_of(Balancer::RoundRobin, 50, &[weighted(1, 0), weighted(2, 1)]);
    assert_eq!(endpoint(&set, 1).weight(), 1);
    assert_eq!(sorted(counts(&set, 10)), [(1, 5), (2, 5)]);
}

#[tokio::test(start_paused = true)]
async fn views_show_what_the_balancer_sees() {
    let set = set_of(Balancer::default(), 50, &[weighted(1, 2), instance(2)]);
    endpoint(&set, 1).in_flight.store(3, Ordering::Relaxed);
    endpoint(&set, 2)
        .readiness
        .breaker_open
        .store(true, Ordering::Relaxed);
    let views = set.views();
    assert_eq!(
        views[0],
        EndpointView {
            address: addr(1),
            weight: 2,
            in_flight: 3,
            ewma_ms: 30.0,
            ready: true,
            unhealthy: false,
            ejected: false,
            breaker_open: false,
            advertised_mtls: None,
            name: None,
        }
    );
    assert!(!views[1].ready && views[1].breaker_open);
    let json = serde_json::to_value(&views[1]).unwrap();
    assert_eq!(json["address"], "127.0.0.1:2");
    assert_eq!(json["breaker_open"], true);
}

#[test]
fn weights_reduce_by_their_divisor_and_scale_to_fit() {
    assert_eq!(reduced_weights(&[100, 200, 300], 1000), [1, 2, 3]);
    assert_eq!(reduced_weights(&[3, 1], 1000), [3, 1]);
    assert_eq!(reduced_weights(&[1000, 1, 3000], 400), [99, 1, 299]);
}

fn advertising(port: u16, id: &str) -> Instance {
    let mut instance = instance(port);
    instance
        .metadata
        .insert(crate::discovery::MTLS_METADATA.to_string(), id.to_string());
    instance
}

#[test]
fn an_endpoint_whose_mtls_advertisement_changes_is_replaced() {
    let set = set_of(
        Balancer::RoundRobin,
        0,
        &[instance(1), advertising(2, "spiffe://d/b")],
    );
    let (one, two) = (endpoint(&set, 1), endpoint(&set, 2));
    assert_eq!(one.advertised_mtls, None);
    assert_eq!(two.advertised_mtls.as_deref(), Some("spiffe://d/b"));

    // Same claims: kept. A claim appears, changes or goes: a new endpoint.
    set.update(&[instance(1), advertising(2, "spiffe://d/b")]);
    assert!(Arc::ptr_eq(&one, &endpoint(&set, 1)));
    assert!(Arc::ptr_eq(&two, &endpoint(&set, 2)));
    set.update(&[
        advertising(1, "spiffe://d/a"),
        advertising(2, "spiffe://d/c"),
    ]);
    assert!(!Arc::ptr_eq(&one, &endpoint(&set, 1)));
    assert_eq!(
        endpoint(&set, 2).advertised_mtls.as_deref(),
        Some("spiffe://d/c")
    );
    let before = endpoint(&set, 1);
    set.update(&[advertising(1, ""), instance(2)]);
    assert_eq!(
        endpoint(&set, 1).advertised_mtls,
        None,
        "an empty claim is none"
    );
    assert!(!Arc::ptr_eq(&before, &endpoint(&set, 1)));
    assert_eq!(endpoint(&set, 2).advertised_mtls, None);
}

#[test]
fn views_name_where_dns_found_each_endpoint() {
    let mut named = instance(1);
    named.metadata.insert(
        crate::discovery::DNS_NAME_METADATA.into(),
        "orders:8080".into(),
    );
    let set = set_of(Balancer::default(), 50, &[named, instance(2)]);
    let views = set.views();
    assert_eq!(views[0].name.as_deref(), Some("orders:8080"));
    assert_eq!(views[1].name, None);
    let json = serde_json::to_value(&views[1]).unwrap();
    assert!(json.get("name").is_none(), "no name for a literal address");
}
