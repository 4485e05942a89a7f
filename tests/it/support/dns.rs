//! A real DNS server: hickory-server on a loopback UDP port, answering for the in-memory
//! zone `test.local.`, which the test changes while it runs and can stop.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_server::authority::{AuthorityObject, Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;
use tokio::net::UdpSocket;

/// The zone every test name lives in.
pub const ZONE: &str = "test.local.";

/// The zone and the server answering for it; the server stops when this drops.
pub struct Zone {
    authority: Arc<InMemoryAuthority>,
    /// Where the server listens (UDP).
    pub server: SocketAddr,
    serial: u32,
    task: tokio::task::JoinHandle<()>,
}

/// A DNS name from text.
pub fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// An A record's data: `127.0.0.<last>`.
pub fn a(last: u8) -> RData {
    RData::A(A(Ipv4Addr::new(127, 0, 0, last)))
}

impl Zone {
    /// An empty zone (an SOA only), served on an ephemeral loopback port.
    pub async fn start() -> Zone {
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
        let task = tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        Zone {
            authority,
            server: addr,
            serial: 1,
            task,
        }
    }

    /// Adds a record to `owner`'s set of its type.
    pub async fn add(&mut self, owner: &str, ttl: u32, rdata: RData) {
        self.serial += 1;
        let record = Record::from_rdata(name(owner), ttl, rdata);
        assert!(self.authority.upsert(record, self.serial).await);
    }

    /// Replaces `owner`'s A records with `127.0.0.<last>` for each of `lasts`.
    pub async fn set_a(&mut self, owner: &str, ttl: u32, lasts: &[u8]) {
        let key = RrKey::new(LowerName::new(&name(owner)), RecordType::A);
        self.authority.records_mut().await.remove(&key);
        for last in lasts {
            self.add(owner, ttl, a(*last)).await;
        }
    }

    /// Stops answering: queries go unanswered from now on.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Zone {
    fn drop(&mut self) {
        self.task.abort();
    }
}
