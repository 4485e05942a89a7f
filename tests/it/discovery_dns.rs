//! The dns registry against a real DNS server (hickory-server on a loopback UDP port)
//! whose in-memory zone the test changes: changes show at the next re-resolution, A and
//! SRV records both, and a name that does not resolve is an outage.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hickory_server::proto::rr::rdata::SRV;
use hickory_server::proto::rr::RData;
use remora::discovery::{DnsConfig, DnsRefresh, DnsRegistry, Instance, Registry, Snapshots};

use crate::support::dns::{a, name, Zone};

fn registry(zone: &Zone, refresh: DnsRefresh) -> DnsRegistry {
    DnsRegistry::new(DnsConfig {
        nameserver: Some(zone.server),
        refresh,
        timeout: Duration::from_millis(500),
    })
    .unwrap()
}

async fn next(watch: &mut Snapshots, within: Duration) -> Result<Vec<Instance>, String> {
    tokio::time::timeout(within, watch.next())
        .await
        .unwrap_or_else(|_| panic!("no item within {within:?}"))
        .unwrap()
        .map_err(|e| e.to_string())
}

fn addrs(snapshot: &[Instance]) -> Vec<String> {
    snapshot.iter().map(|i| i.addr.to_string()).collect()
}

#[tokio::test]
async fn a_records_are_re_resolved_at_their_ttl_and_at_fixed_intervals() {
    let mut zone = Zone::start().await;
    zone.add("orders.test.local.", 1, a(1)).await;
    let ttl_driven = registry(
        &zone,
        DnsRefresh::Ttl {
            min: Duration::from_millis(200),
            max: Duration::from_secs(30),
        },
    );
    let fixed = registry(&zone, DnsRefresh::Every(Duration::from_millis(300)));
    let mut by_ttl = ttl_driven.watch("orders.test.local.:8080");
    let mut by_interval = fixed.watch("orders.test.local.:8080");
    for watch in [&mut by_ttl, &mut by_interval] {
        let first = next(watch, Duration::from_secs(2)).await.unwrap();
        assert_eq!(addrs(&first), ["127.0.0.1:8080"]);
    }

    let changed = Instant::now();
    zone.add("orders.test.local.", 1, a(2)).await;
    for watch in [&mut by_ttl, &mut by_interval] {
        let snapshot = next(watch, Duration::from_secs(3)).await.unwrap();
        assert_eq!(addrs(&snapshot), ["127.0.0.1:8080", "127.0.0.2:8080"]);
    }
    // Picked up at the next re-resolution: within the 1 s TTL (plus a query), not later.
    assert!(changed.elapsed() < Duration::from_millis(2500));

    // A name that does not exist is an outage, never an empty snapshot.
    let mut missing = fixed.watch("missing.test.local.:80");
    assert!(next(&mut missing, Duration::from_secs(3)).await.is_err());
}

#[tokio::test]
async fn srv_records_give_ports_and_weights() {
    let mut zone = Zone::start().await;
    zone.add("orders.test.local.", 60, a(1)).await;
    zone.add("billing.test.local.", 60, a(3)).await;
    let srv = |weight, port, target| RData::SRV(SRV::new(0, weight, port, name(target)));
    zone.add(
        "_http._tcp.test.local.",
        1,
        srv(5, 9000, "orders.test.local."),
    )
    .await;
    let registry = registry(
        &zone,
        DnsRefresh::Ttl {
            min: Duration::from_millis(200),
            max: Duration::from_secs(30),
        },
    );
    let mut watch = registry.watch("_http._tcp.test.local.");
    let first = next(&mut watch, Duration::from_secs(2)).await.unwrap();
    assert_eq!(addrs(&first), ["127.0.0.1:9000"]);
    assert_eq!(first[0].weight, 5);
    assert_eq!(first[0].metadata["srv_target"], "orders.test.local.");

    zone.add(
        "_http._tcp.test.local.",
        1,
        srv(1, 9001, "billing.test.local."),
    )
    .await;
    let snapshot = next(&mut watch, Duration::from_secs(3)).await.unwrap();
    assert_eq!(addrs(&snapshot), ["127.0.0.1:9000", "127.0.0.3:9001"]);
}
