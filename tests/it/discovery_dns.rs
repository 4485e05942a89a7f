//! The dns registry against a real DNS server (hickory-server on a loopback UDP port)
//! whose in-memory zone the test changes: changes show at the next re-resolution, A and
//! SRV records both, and a name that does not resolve is an outage.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hickory_server::authority::{AuthorityObject, Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;
use remora::discovery::{DnsConfig, DnsRefresh, DnsRegistry, Instance, Registry, Snapshots};
use tokio::net::UdpSocket;

const ZONE: &str = "test.local.";

struct Zone {
    authority: Arc<InMemoryAuthority>,
    server: SocketAddr,
    serial: u32,
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

impl Zone {
    async fn start() -> Zone {
        let origin = name(ZONE);
        let authority = Arc::new(InMemoryAuthority::empty(
            origin.clone(),
            ZoneType::Primary,
            false,
        ));
        let soa = SOA::new(
            name("ns.test.local."),
            name("admin.test.local."),
            1,
            60,
            60,
            60,
            1,
        );
        authority
            .upsert(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1)
            .await;
        let mut catalog = Catalog::new();
        let object: Arc<dyn AuthorityObject> = authority.clone();
        catalog.upsert(LowerName::new(&origin), vec![object]);
        let mut server = ServerFuture::new(catalog);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        server.register_socket(socket);
        tokio::spawn(async move { server.block_until_done().await });
        Zone {
            authority,
            server: addr,
            serial: 1,
        }
    }

    async fn add(&mut self, owner: &str, ttl: u32, rdata: RData) {
        self.serial += 1;
        let record = Record::from_rdata(name(owner), ttl, rdata);
        assert!(self.authority.upsert(record, self.serial).await);
    }

    fn registry(&self, refresh: DnsRefresh) -> DnsRegistry {
        DnsRegistry::new(DnsConfig {
            nameserver: Some(self.server),
            refresh,
            timeout: Duration::from_millis(500),
        })
        .unwrap()
    }
}

fn a(last: u8) -> RData {
    RData::A(A(Ipv4Addr::new(127, 0, 0, last)))
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
    let ttl_driven = zone.registry(DnsRefresh::Ttl {
        min: Duration::from_millis(200),
        max: Duration::from_secs(30),
    });
    let fixed = zone.registry(DnsRefresh::Every(Duration::from_millis(300)));
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
    let registry = zone.registry(DnsRefresh::Ttl {
        min: Duration::from_millis(200),
        max: Duration::from_secs(30),
    });
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
