//! The `examples/local` topology end to end, in one process: a real etcd, the example
//! services (frontend -> orders -> inventory x3, the code of `examples/services`), and a
//! sidecar each, started from `examples/local/config/*.yaml` with only the addresses
//! changed (free loopback ports), exporting to an OTLP receiver.
//! The sidecars speak mutual TLS as the configs say, with certificates issued as
//! `run.sh` issues them; each inventory sidecar registers itself in etcd, advertising
//! mutual TLS, and orders' sidecar upgrades to it from that record alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use remora::Sidecar;
use tokio::net::TcpListener;

use crate::support::{self, etcd_harness, otlp_receiver};

use crate::services::INVENTORY_INSTANCE;
use crate::services::{self, knobs::Knobs};

const REPLICAS: [&str; 3] = ["inventory-1", "inventory-2", "inventory-3"];
/// Requests in flight at once, so that in-flight counts spread load across replicas.
const CONCURRENCY: usize = 6;
const WAIT: Duration = Duration::from_secs(10);

/// Loads `examples/local/config/<file>` with `vars` as the only environment.
fn config(file: &str, vars: &[(&str, String)]) -> remora::config::Config {
    let path = format!(
        "{}/examples/local/config/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let lookup = |key: &str| vars.get(key).cloned();
    remora::build::parse_with_env(&path, &text, &lookup).unwrap_or_else(|e| panic!("{e}"))
}

async fn sidecar(file: &str, vars: &[(&str, String)]) -> Sidecar {
    Sidecar::start(config(file, vars))
        .await
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

async fn app_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

struct Replica {
    sidecar: Option<Sidecar>,
    served: Arc<AtomicU64>,
    inbound: SocketAddr,
}

struct Topology {
    _etcd: etcd_harness::Etcd,
    _certs: tempfile::TempDir,
    received: otlp_receiver::Received,
    replicas: Vec<Replica>,
    orders: Sidecar,
    frontend: Sidecar,
}

impl Topology {
    async fn start() -> Topology {
        let etcd = etcd_harness::Etcd::start().await;
        let (collector, received) = otlp_receiver::grpc().await;
        // What run.sh issues with `remora cert`: the sidecars speak mutual TLS.
        let certs =
            support::certs::issue_mesh("remora.example", &["frontend", "orders", "inventory"]);
        let common = [
            ("ETCD_ENDPOINT", etcd.endpoint()),
            ("OTLP_ENDPOINT", format!("http://{collector}")),
            ("CERT_DIR", certs.path().display().to_string()),
        ];
        let any = || "127.0.0.1:0".to_string();

        let mut replicas = Vec::new();
        for instance in REPLICAS {
            let (listener, app) = app_listener().await;
            let inventory = services::inventory::Inventory::new(instance, Knobs::default());
            let served = inventory.served.clone();
            tokio::spawn(inventory.serve(listener));
            let inbound = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
            let mut vars = common.to_vec();
            vars.extend([
                ("INSTANCE", instance.to_string()),
                ("ADMIN_LISTEN", any()),
                ("INBOUND_LISTEN", inbound.to_string()),
                ("APP_ADDR", app.to_string()),
                ("REGISTER_ADDR", inbound.to_string()),
            ]);
            let sidecar = sidecar("inventory.yaml", &vars).await;
            replicas.push(Replica {
                sidecar: Some(sidecar),
                served,
                inbound,
            });
        }

        let (listener, app) = app_listener().await;
        let mut vars = common.to_vec();
        vars.extend([
            ("ADMIN_LISTEN", any()),
            ("INBOUND_LISTEN", any()),
            ("APP_ADDR", app.to_string()),
            ("INVENTORY_LISTEN", any()),
        ]);
        let orders = sidecar("orders.yaml", &vars).await;
        let inventory_url = format!("http://{}", orders.addrs().service("inventory").unwrap());
        let app_orders = services::orders::Orders::new(&inventory_url, Knobs::default()).unwrap();
        tokio::spawn(app_orders.serve(listener));

        let (listener, app) = app_listener().await;
        let mut vars = common.to_vec();
        vars.extend([
            ("ADMIN_LISTEN", any()),
            ("INBOUND_LISTEN", any()),
            ("APP_ADDR", app.to_string()),
            ("ORDERS_LISTEN", any()),
            ("ORDERS_ADDR", orders.addrs().inbound.unwrap().to_string()),
        ]);
        let frontend = sidecar("frontend.yaml", &vars).await;
        let orders_url = format!("http://{}", frontend.addrs().service("orders").unwrap());
        let app_frontend = services::frontend::Frontend::new(&orders_url, Knobs::default());
        tokio::spawn(app_frontend.serve(listener));

        Topology {
            _etcd: etcd,
            _certs: certs,
            received,
            replicas,
            orders,
            frontend,
        }
    }

    /// Waits until orders' sidecar lists exactly these inventory endpoints.
    async fn wait_for_inventory(&self, expected: &[SocketAddr]) {
        let admin = self.orders.addrs().admin.unwrap();
        let found = support::eventually(WAIT, || async {
            let (_, _, body) = support::get(&format!("http://{admin}/endpoints")).await;
            self.replicas
                .iter()
                .all(|r| body.contains(&r.inbound.to_string()) == expected.contains(&r.inbound))
        })
        .await;
        assert!(found, "orders' sidecar never saw inventory at {expected:?}");
    }

    /// Sends `count` checkouts through frontend's sidecar, [`CONCURRENCY`] at a time, and
    /// returns (status, inventory instance) of each.
    async fn checkouts(&self, count: usize) -> Vec<(u16, String)> {
        let entry = self.frontend.addrs().inbound.unwrap();
        let mut outcomes = Vec::new();
        for batch in (0..count).collect::<Vec<_>>().chunks(CONCURRENCY) {
            let calls = batch.iter().map(|i| async move {
                let url = format!("http://{entry}/checkout/item-{i}");
                let (status, headers, body) = support::get(&url).await;
                let instance = headers
                    .get(INVENTORY_INSTANCE)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                assert_eq!(status, 200, "checkout {i}: {body}");
                (status.as_u16(), instance)
            });
            outcomes.extend(futures_util::future::join_all(calls).await);
        }
        outcomes
    }

    async fn flush(&self) {
        self.frontend.handle().tracing().flush().await;
        self.orders.handle().tracing().flush().await;
        for replica in &self.replicas {
            if let Some(sidecar) = &replica.sidecar {
                sidecar.handle().tracing().flush().await;
            }
        }
    }
}

fn tally(outcomes: &[(u16, String)]) -> BTreeMap<String, usize> {
    let mut by_instance = BTreeMap::new();
    for (_, instance) in outcomes {
        *by_instance.entry(instance.clone()).or_default() += 1;
    }
    by_instance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_flow_through_every_replica_survive_a_dead_one_and_trace_as_one() {
    let mut topology = Topology::start().await;
    let all: Vec<SocketAddr> = topology.replicas.iter().map(|r| r.inbound).collect();
    topology.wait_for_inventory(&all).await;

    // Every checkout succeeds, answered by a real replica, and every replica answers.
    let first = topology.checkouts(60).await;
    let by_instance = tally(&first);
    assert_eq!(
        by_instance.keys().map(String::as_str).collect::<Vec<_>>(),
        REPLICAS,
        "every replica (and no fallback) answers: {by_instance:?}"
    );
    for (replica, name) in topology.replicas.iter().zip(REPLICAS) {
        assert!(
            replica.served.load(Ordering::Relaxed) > 0,
            "{name} served nothing"
        );
    }

    // One trace per checkout, each through all three services: the apps forward the
    // trace headers, so orders and inventory continue frontend's trace.
    topology.flush().await;
    let mut traces: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let complete = support::eventually(WAIT, || {
        traces.clear();
        for span in topology.received.spans() {
            traces
                .entry(span.trace_id)
                .or_default()
                .insert(span.service);
        }
        let done =
            traces.len() >= first.len() && traces.values().all(|services| services.len() == 3);
        async move { done }
    })
    .await;
    assert!(
        complete && traces.len() == first.len(),
        "{} checkouts, {} traces: {traces:?}",
        first.len(),
        traces.len()
    );

    // inventory-2's sidecar stops (and withdraws its registration): calls that meet it
    // are retried on the other replicas; none fails, none degrades.
    let dead = &mut topology.replicas[1];
    let sidecar = dead.sidecar.take().unwrap();
    tokio::time::timeout(WAIT, sidecar.shutdown())
        .await
        .expect("shutdown in time");
    let served_before = dead.served.load(Ordering::Relaxed);

    let second = topology.checkouts(60).await;
    let by_instance = tally(&second);
    assert_eq!(
        by_instance.keys().map(String::as_str).collect::<Vec<_>>(),
        ["inventory-1", "inventory-3"],
        "the survivors (and no fallback) answer: {by_instance:?}"
    );
    assert_eq!(
        topology.replicas[1].served.load(Ordering::Relaxed),
        served_before
    );

    // Its registration is gone, and orders' sidecar drops the endpoint.
    let alive = [all[0], all[2]];
    topology.wait_for_inventory(&alive).await;
    let third = topology.checkouts(12).await;
    assert!(third
        .iter()
        .all(|(_, i)| i == "inventory-1" || i == "inventory-3"));
}
