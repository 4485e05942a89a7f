//! The compose example on hosts of its own, without Docker: the network namespaces of
//! `scripts/netns-topology.sh`, one per compose service, each running its example service
//! (the code of `examples/services`, on 127.0.0.1:8080 as in the compose file) and a
//! `remora` process started from `examples/compose/config/*.yaml` as they are. Sidecars
//! reach each other by name (`orders:15016`, `etcd:2379`, `jaeger:4317`) through each
//! host's `/etc/hosts`, inventory replicas register `inventory-N:15026` in a real etcd on
//! its own host, and the sidecars speak mutual TLS with certificates issued as the
//! compose `certs` service issues them. Then one replica's cable is pulled: calls keep
//! succeeding on the others, and once it is plugged back the replica serves again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::support::metrics_text::{value, value_or_zero};
use crate::support::netns::{Host, Network};
use crate::support::{self, otlp_receiver, Process};

use crate::services::INVENTORY_INSTANCE;
use crate::services::{self, knobs::Knobs};

const REPLICAS: [&str; 3] = ["inventory-1", "inventory-2", "inventory-3"];
const CANARY: &str = "inventory-v2";
/// Where every app listens on its own host (the compose file's `LISTEN`).
const APP: &str = "127.0.0.1:8080";
/// The ports of the compose configs: admin, frontend's and inventory's inbound.
const ADMIN: u16 = 15000;
const FRONTEND_INBOUND: u16 = 15006;
const INVENTORY_INBOUND: u16 = 15026;
/// Requests in flight at once, so that in-flight counts spread load across replicas.
const CONCURRENCY: usize = 6;
const WAIT: Duration = Duration::from_secs(15);
/// Orders' sidecar's count of failed tries to inventory that were retried.
const RETRIES: &str = "remora_retries_total{service=\"inventory\"}";

/// The outcome of one checkout: status and the inventory instance that answered.
#[derive(Debug)]
struct Checkout {
    status: u16,
    instance: String,
}

/// Everything the test started, in drop order: processes, then the hosts' threads,
/// then the namespaces.
struct Topology {
    sidecars: Vec<Process>,
    _etcd: Process,
    served: BTreeMap<&'static str, Arc<AtomicU64>>,
    received: otlp_receiver::Received,
    _apps: Vec<Host>,
    loadgen: Host,
    _logs: tempfile::TempDir,
    _certs: tempfile::TempDir,
    network: Network,
}

/// GET `url` from whatever host runs it; `None` when it cannot connect or gets no answer.
async fn try_get(url: String) -> Option<(http::StatusCode, http::HeaderMap, String)> {
    let request = support::http1_client().get(url.parse().unwrap());
    let response = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .ok()?
        .ok()?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn compose_config(file: &str) -> String {
    format!(
        "{}/examples/compose/config/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

impl Topology {
    async fn start() -> Topology {
        // Declared first so that it is dropped last if a step below panics.
        let network = Network::up();
        let logs = tempfile::tempdir().unwrap();
        let certs = support::certs::issue_mesh(
            "remora.example",
            &["frontend", "orders", "inventory", CANARY],
        );
        let loadgen = network.host("loadgen");

        require_etcd();
        let mut etcd = network.command("etcd", "etcd");
        etcd.args([
            "--name=etcd",
            "--listen-client-urls=http://0.0.0.0:2379",
            "--advertise-client-urls=http://etcd:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=etcd=http://127.0.0.1:2380",
        ])
        .arg(format!("--data-dir={}", logs.path().join("etcd").display()));
        let mut etcd = spawn(&mut etcd, &logs, "etcd");
        let health = format!("http://{}:2379/health", network.address("etcd"));
        wait_answering(&loadgen, &mut etcd, &health).await;

        let mut apps = Vec::new();
        let jaeger = network.host("jaeger");
        let received = jaeger
            .run(async { otlp_receiver::grpc_on(TcpListener::bind("0.0.0.0:4317").await.unwrap()) })
            .await;
        apps.push(jaeger);

        let mut served = BTreeMap::new();
        let mut sidecars = Vec::new();
        for instance in REPLICAS.into_iter().chain([CANARY]) {
            let host = network.host(instance);
            let counter = host
                .run(async move {
                    let inventory = services::inventory::Inventory::new(instance, Knobs::default());
                    let served = inventory.served.clone();
                    tokio::spawn(inventory.serve(TcpListener::bind(APP).await.unwrap()));
                    served
                })
                .await;
            served.insert(instance, counter);
            apps.push(host);
            let mut sidecar = network.command(instance, env!("CARGO_BIN_EXE_remora"));
            sidecar.env("INSTANCE", instance);
            if instance == CANARY {
                sidecar.env("SERVICE", CANARY);
            }
            sidecars.push(run_sidecar(
                sidecar,
                &certs,
                &logs,
                instance,
                "inventory.yaml",
            ));
        }

        let orders = network.host("orders");
        orders
            .run(async {
                let app = services::orders::Orders::new("http://127.0.0.1:15102", Knobs::default())
                    .unwrap();
                tokio::spawn(app.serve(TcpListener::bind(APP).await.unwrap()));
            })
            .await;
        apps.push(orders);
        let sidecar = network.command("orders", env!("CARGO_BIN_EXE_remora"));
        sidecars.push(run_sidecar(sidecar, &certs, &logs, "orders", "orders.yaml"));

        let frontend = network.host("frontend");
        frontend
            .run(async {
                let app =
                    services::frontend::Frontend::new("http://127.0.0.1:15101", Knobs::default());
                tokio::spawn(app.serve(TcpListener::bind(APP).await.unwrap()));
            })
            .await;
        apps.push(frontend);
        let sidecar = network.command("frontend", env!("CARGO_BIN_EXE_remora"));
        sidecars.push(run_sidecar(
            sidecar,
            &certs,
            &logs,
            "frontend",
            "frontend.yaml",
        ));

        let hosts = REPLICAS.into_iter().chain([CANARY, "orders", "frontend"]);
        for (sidecar, host) in sidecars.iter_mut().zip(hosts) {
            let live = format!("http://{}:{ADMIN}/live", network.address(host));
            wait_answering(&loadgen, sidecar, &live).await;
        }

        Topology {
            sidecars,
            _etcd: etcd,
            served,
            received,
            _apps: apps,
            loadgen,
            _logs: logs,
            _certs: certs,
            network,
        }
    }

    fn inventory_address(&self, instance: &str) -> SocketAddr {
        SocketAddr::new(self.network.address(instance), INVENTORY_INBOUND)
    }

    /// The endpoints of each service orders' sidecar discovers (its `/endpoints`).
    async fn orders_endpoints(&self) -> BTreeMap<String, BTreeSet<SocketAddr>> {
        let url = format!(
            "http://{}:{ADMIN}/endpoints",
            self.network.address("orders")
        );
        let Some((_, _, body)) = self.loadgen.run(try_get(url)).await else {
            return BTreeMap::new();
        };
        let services: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut found = BTreeMap::new();
        for service in services.as_array().unwrap() {
            let addresses = service["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["address"].as_str().unwrap().parse().unwrap())
                .collect();
            found.insert(service["service"].as_str().unwrap().to_string(), addresses);
        }
        found
    }

    /// Orders' sidecar's `/metrics` text.
    async fn orders_metrics(&self) -> String {
        let url = format!("http://{}:{ADMIN}/metrics", self.network.address("orders"));
        let answer = self.loadgen.run(try_get(url)).await;
        let (status, _, text) = answer.expect("orders' sidecar answers /metrics");
        assert_eq!(status, 200, "GET /metrics: {text}");
        text
    }

    /// Waits until orders' sidecar lists exactly these instances of `inventory`.
    async fn wait_for_inventory(&self, instances: &[&str]) {
        let expected: BTreeSet<SocketAddr> = instances
            .iter()
            .map(|i| self.inventory_address(i))
            .collect();
        let mut last = BTreeMap::new();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            last = self.orders_endpoints().await;
            if last.get("inventory") == Some(&expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("orders' sidecar never listed inventory at {expected:?}; it lists {last:?}");
    }

    /// Sends `count` checkouts to frontend's sidecar (`frontend:15006`) from the loadgen
    /// host, [`CONCURRENCY`] at a time, marked for the canary when `canary`.
    async fn checkouts(&self, count: usize, canary: bool) -> Vec<Checkout> {
        let entry = SocketAddr::new(self.network.address("frontend"), FRONTEND_INBOUND);
        self.loadgen
            .run(async move {
                let mut outcomes = Vec::new();
                for batch in (0..count).collect::<Vec<_>>().chunks(CONCURRENCY) {
                    let calls = batch.iter().map(|i| async move {
                        let url = format!("http://{entry}/checkout/item-{i}");
                        let mut request = http::Request::get(url);
                        if canary {
                            request = request.header("x-canary", "true");
                        }
                        let request = request.body(Full::new(Bytes::new())).unwrap();
                        let answer = support::http1_client().request(request);
                        match tokio::time::timeout(Duration::from_secs(5), answer).await {
                            Ok(Ok(response)) => Checkout {
                                status: response.status().as_u16(),
                                instance: response
                                    .headers()
                                    .get(INVENTORY_INSTANCE)
                                    .map(|v| v.to_str().unwrap().to_string())
                                    .unwrap_or_default(),
                            },
                            Ok(Err(error)) => Checkout {
                                status: 0,
                                instance: error.to_string(),
                            },
                            Err(_) => Checkout {
                                status: 0,
                                instance: "no answer within 5s".to_string(),
                            },
                        }
                    });
                    outcomes.extend(futures_util::future::join_all(calls).await);
                }
                outcomes
            })
            .await
    }

    fn served(&self, instance: &str) -> u64 {
        self.served[instance].load(Ordering::Relaxed)
    }

    /// The sidecars' logs, for a failure message.
    fn logs(&self) -> String {
        self.sidecars
            .iter()
            .map(|s| format!("--- {}\n{}", s.stderr.display(), s.log()))
            .collect()
    }
}

/// Panics (never skips) without the etcd binary, as the etcd harness does.
fn require_etcd() {
    if let Err(error) = std::process::Command::new("etcd").arg("--version").output() {
        panic!(
            "cannot run etcd ({error}); this test needs a real one: apt-get install -y etcd-server"
        );
    }
}

/// Starts `command` (already placed on its host) with its output in `<logs>/<name>.log`.
fn spawn(command: &mut std::process::Command, logs: &tempfile::TempDir, name: &str) -> Process {
    let stderr = logs.path().join(format!("{name}.log"));
    let file = std::fs::File::create(&stderr).unwrap();
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    Process { child, stderr }
}

/// `remora run` with the compose config `file`, certificates from `certs`.
fn run_sidecar(
    mut command: std::process::Command,
    certs: &tempfile::TempDir,
    logs: &tempfile::TempDir,
    name: &str,
    file: &str,
) -> Process {
    command
        .args(["run", "--config"])
        .arg(compose_config(file))
        .env("CERT_DIR", certs.path());
    spawn(&mut command, logs, &format!("{name}-sidecar"))
}

/// Polls `url` from `from` until it answers 200; panics with the process's log if the
/// process exits first or the wait runs out.
async fn wait_answering(from: &Host, process: &mut Process, url: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            panic!(
                "{} exited with {status}:\n{}",
                process.stderr.display(),
                process.log()
            );
        }
        if let Some((status, _, _)) = from.run(try_get(url.to_string())).await {
            if status == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing answered {url} within {WAIT:?}:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many checkouts each instance answered; panics on any that failed.
fn tally(outcomes: &[Checkout], topology: &Topology) -> BTreeMap<String, usize> {
    let mut by_instance = BTreeMap::new();
    for outcome in outcomes {
        assert_eq!(
            outcome.status,
            200,
            "a checkout failed: {outcome:?}\n{}",
            topology.logs()
        );
        *by_instance.entry(outcome.instance.clone()).or_default() += 1;
    }
    by_instance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_hosts_reach_each_other_by_name_and_survive_a_pulled_cable() {
    let topology = Topology::start().await;
    topology.wait_for_inventory(&REPLICAS).await;

    // Every replica answers through frontend -> orders (mutual TLS, names resolved in
    // each host's /etc/hosts), and the canary takes the calls marked for it.
    let first = topology.checkouts(60, false).await;
    let by_instance = tally(&first, &topology);
    for replica in REPLICAS {
        assert!(
            by_instance.contains_key(replica),
            "{replica} answered none: {by_instance:?}"
        );
        assert!(topology.served(replica) > 0, "{replica} served nothing");
    }
    assert!(
        by_instance
            .keys()
            .all(|i| REPLICAS.contains(&i.as_str()) || i == CANARY),
        "only real replicas (no fallback) answer: {by_instance:?}"
    );
    let marked = topology.checkouts(6, true).await;
    assert_eq!(
        tally(&marked, &topology),
        BTreeMap::from([(CANARY.to_string(), 6)])
    );

    // Every sidecar exported its spans to jaeger:4317, each checkout one trace through
    // three services.
    let mut traces: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let complete = support::eventually(WAIT, || {
        traces.clear();
        for span in topology.received.spans() {
            traces
                .entry(span.trace_id)
                .or_default()
                .insert(span.service);
        }
        let done = traces.len() >= first.len() + marked.len()
            && traces.values().all(|services| services.len() == 3);
        async move { done }
    })
    .await;
    assert!(
        complete,
        "{} checkouts, traces: {traces:?}",
        first.len() + marked.len()
    );

    // inventory-2's cable is pulled: its sidecar neither answers nor refuses. Calls
    // that meet it time out per try and are retried on the others; none fails.
    // Absent means zero: a labelled counter appears once something counts in it, and
    // the reading after the cut is of the same spelling and must be there.
    let retries = |text: &str| value_or_zero(text, RETRIES);
    let retried_before = retries(&topology.orders_metrics().await);
    topology.network.link("inventory-2", false);
    let served_before = topology.served("inventory-2");
    let cut = topology.checkouts(60, false).await;
    let by_instance = tally(&cut, &topology);
    assert!(
        by_instance
            .keys()
            .all(|i| i == "inventory-1" || i == "inventory-3" || i == CANARY),
        "only the reachable replicas (no fallback) answer: {by_instance:?}\n{}",
        topology.logs()
    );
    assert_eq!(topology.served("inventory-2"), served_before);
    let retried = value(&topology.orders_metrics().await, RETRIES);
    assert!(
        retried > retried_before,
        "calls met the unplugged replica and were retried: {retried_before} -> {retried}"
    );

    // Cut off from etcd, its registration expires (ttl 5s) and orders drops it.
    let reachable = ["inventory-1", "inventory-3"];
    topology.wait_for_inventory(&reachable).await;

    // Plugged back, it registers again and takes its share once more.
    topology.network.link("inventory-2", true);
    topology.wait_for_inventory(&REPLICAS).await;
    let deadline = Instant::now() + WAIT;
    while topology.served("inventory-2") == served_before {
        assert!(
            Instant::now() < deadline,
            "inventory-2 got no call within {WAIT:?} of coming back\n{}",
            topology.logs()
        );
        tally(&topology.checkouts(12, false).await, &topology);
    }
}
