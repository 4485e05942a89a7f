//! The consul registry against a fake Consul agent that honours blocking queries and TTL
//! checks: snapshots follow registrations, passes keep checks alive, deregistration is
//! immediate, a stopped sidecar's check goes critical, and watches do not busy-poll;
//! over HTTPS (with a client certificate) the same, with the ACL token sent each time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use remora::discovery::{ConsulConfig, ConsulRegistry, Instance, Registry, RegistryTls, Snapshots};

use crate::support::pki::Pki;
use serde_json::{json, Value};
use tokio::sync::watch;

/// One registered service and its TTL check.
struct Entry {
    definition: Value,
    ttl: Duration,
    deadline: Instant,
    passing: bool,
}

/// A Consul agent reduced to the endpoints remora uses.
#[derive(Default)]
pub(crate) struct FakeConsul {
    services: Mutex<BTreeMap<String, Entry>>,
    index: Mutex<Option<watch::Sender<u64>>>,
    health_queries: AtomicUsize,
    passes: AtomicUsize,
    /// The `X-Consul-Token` of each request (empty when absent).
    pub(crate) tokens: Mutex<Vec<String>>,
}

fn millis(go: &str) -> Duration {
    let number = |s: &str| s.parse::<u64>().expect("a duration number");
    match go.strip_suffix("ms") {
        Some(ms) => Duration::from_millis(number(ms)),
        None => Duration::from_secs(number(go.trim_end_matches('s'))),
    }
}

impl FakeConsul {
    fn bump(&self) {
        if let Some(index) = self.index.lock().unwrap().as_ref() {
            index.send_modify(|i| *i += 1);
        }
    }

    fn index(&self) -> watch::Receiver<u64> {
        self.index.lock().unwrap().as_ref().unwrap().subscribe()
    }

    /// Turns checks whose TTL ran out critical.
    fn expire(&self) {
        let now = Instant::now();
        let mut changed = false;
        for entry in self.services.lock().unwrap().values_mut() {
            if entry.passing && entry.deadline <= now {
                entry.passing = false;
                changed = true;
            }
        }
        if changed {
            self.bump();
        }
    }

    fn passing(&self, name: &str) -> Value {
        let services = self.services.lock().unwrap();
        let entries: Vec<Value> = services
            .values()
            .filter(|e| e.passing && e.definition["Name"] == name)
            .map(|e| {
                let d = &e.definition;
                json!({
                    "Node": {"Node": "fake", "Address": "127.0.0.1"},
                    "Service": {"ID": d["ID"], "Service": d["Name"], "Address": d["Address"],
                                "Port": d["Port"], "Meta": d["Meta"], "Weights": d["Weights"]},
                    "Checks": [],
                })
            })
            .collect();
        Value::Array(entries)
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().clone();
        let token = request
            .headers()
            .get("x-consul-token")
            .map(|t| t.to_str().unwrap().to_string());
        self.tokens.lock().unwrap().push(token.unwrap_or_default());
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let reply = |status: StatusCode, body: String| {
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        };
        if method == Method::PUT && path == "/v1/agent/service/register" {
            let definition: Value = serde_json::from_slice(&body).unwrap();
            let ttl = millis(definition["Check"]["TTL"].as_str().unwrap());
            let entry = Entry {
                passing: definition["Check"]["Status"] == "passing",
                definition,
                ttl,
                deadline: Instant::now() + ttl,
            };
            let id = entry.definition["ID"].as_str().unwrap().to_string();
            self.services.lock().unwrap().insert(id, entry);
            self.bump();
            return reply(StatusCode::OK, String::new());
        }
        if let Some(check) = path.strip_prefix("/v1/agent/check/pass/") {
            self.passes.fetch_add(1, Ordering::SeqCst);
            let id = check.trim_start_matches("service:");
            let mut services = self.services.lock().unwrap();
            let Some(entry) = services.get_mut(id) else {
                return reply(StatusCode::NOT_FOUND, format!("Unknown check ID {check:?}"));
            };
            entry.deadline = Instant::now() + entry.ttl;
            let was = std::mem::replace(&mut entry.passing, true);
            drop(services);
            if !was {
                self.bump();
            }
            return reply(StatusCode::OK, String::new());
        }
        if let Some(id) = path.strip_prefix("/v1/agent/service/deregister/") {
            self.services.lock().unwrap().remove(id);
            self.bump();
            return reply(StatusCode::OK, String::new());
        }
        if let Some(name) = path.strip_prefix("/v1/health/service/") {
            self.health_queries.fetch_add(1, Ordering::SeqCst);
            let param = |key: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                    .map(str::to_string)
            };
            assert_eq!(param("passing").as_deref(), Some("true"));
            let wanted: u64 = param("index").map_or(0, |i| i.parse().unwrap());
            let wait = param("wait").map_or(Duration::from_secs(300), |w| millis(&w));
            let mut index = self.index();
            // The blocking query: hold until the index passes `wanted` or `wait` elapses.
            let _ = tokio::time::timeout(wait, index.wait_for(|i| *i > wanted)).await;
            let current = *index.borrow();
            let mut response = reply(StatusCode::OK, self.passing(name).to_string());
            response
                .headers_mut()
                .insert("x-consul-index", current.to_string().parse().unwrap());
            return response;
        }
        reply(StatusCode::NOT_FOUND, format!("no route {method} {path}"))
    }
}

async fn start_fake() -> (Arc<FakeConsul>, SocketAddr) {
    start_fake_with(None).await
}

/// A fake agent; over TLS with `tls`.
pub(crate) async fn start_fake_with(
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (Arc<FakeConsul>, SocketAddr) {
    let fake = Arc::new(FakeConsul::default());
    *fake.index.lock().unwrap() = Some(watch::channel(1).0);
    let server = fake.clone();
    let addr = crate::support::fake_server::serve(tls, move |request| {
        let fake = server.clone();
        async move { fake.handle(request).await }
    })
    .await;
    let ticker = fake.clone();
    crate::support::fake_server::tick(move || ticker.expire());
    (fake, addr)
}

fn ids(snapshot: &[Instance]) -> Vec<&str> {
    snapshot.iter().map(|i| i.id.as_str()).collect()
}

async fn next(watch: &mut Snapshots, within: Duration) -> Vec<Instance> {
    tokio::time::timeout(within, watch.next())
        .await
        .unwrap_or_else(|_| panic!("no snapshot within {within:?}"))
        .unwrap()
        .unwrap()
}

fn instance(id: &str, port: u16) -> Instance {
    Instance::new(([127, 0, 0, 1], port).into()).with_id(id)
}

#[tokio::test]
async fn snapshots_follow_registrations_checks_and_deregistration() {
    let (fake, addr) = start_fake().await;
    let mut config = ConsulConfig::new(addr.to_string());
    config.wait = Duration::from_secs(2);
    let registry = ConsulRegistry::new(config).unwrap();
    let mut watch = registry.watch("orders");
    assert!(next(&mut watch, Duration::from_secs(2)).await.is_empty());

    let ttl = Duration::from_secs(1);
    let mut zoned = instance("a", 1);
    zoned.metadata.insert("zone".into(), "z1".into());
    let crashed = registry
        .register("orders", zoned.clone(), ttl)
        .await
        .unwrap();
    let snapshot = next(&mut watch, Duration::from_secs(1)).await;
    assert_eq!(snapshot, vec![zoned]);

    // Idle for three TTLs: the passes keep the check passing, and the watch waits in
    // blocking queries instead of polling.
    let queries_before = fake.health_queries.load(Ordering::SeqCst);
    let idle = tokio::time::timeout(Duration::from_secs(3), watch.next()).await;
    assert!(
        idle.is_err(),
        "no change while the check is passed: {idle:?}"
    );
    let queries = fake.health_queries.load(Ordering::SeqCst) - queries_before;
    assert!(queries <= 3, "{queries} health queries in 3s with wait=2s");
    assert!(
        fake.passes.load(Ordering::SeqCst) >= 6,
        "passed every TTL/3"
    );

    let leaving = registry
        .register("orders", instance("b", 2), ttl)
        .await
        .unwrap();
    assert_eq!(
        ids(&next(&mut watch, Duration::from_secs(1)).await),
        ["a", "b"]
    );
    let deregistered = Instant::now();
    leaving.deregister().await.unwrap();
    assert_eq!(ids(&next(&mut watch, Duration::from_secs(1)).await), ["a"]);
    assert!(deregistered.elapsed() < Duration::from_millis(500));

    // A crash: no more passes; the check goes critical at its TTL.
    let dropped = Instant::now();
    drop(crashed);
    assert!(next(&mut watch, Duration::from_secs(3)).await.is_empty());
    assert!(dropped.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn an_unreachable_agent_is_an_outage_and_registration_fails() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let registry = ConsulRegistry::new(ConsulConfig::new(format!("127.0.0.1:{port}"))).unwrap();
    let mut watch = registry.watch("orders");
    let item = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .unwrap();
    assert!(item.unwrap().is_err());
    let refused = registry
        .register("orders", instance("a", 1), Duration::from_secs(1))
        .await;
    assert!(refused.is_err());
}

// ---- over HTTPS ----

fn https_config(addr: SocketAddr, pki: &Pki, ca: &std::path::Path, present: bool) -> ConsulConfig {
    let mut config = ConsulConfig::new(format!("https://{addr}"));
    config.wait = Duration::from_secs(2);
    config.token = Some("s3cret-token".into());
    config.tls = Some(RegistryTls {
        config: pki.client(ca, present),
        server_name: None,
    });
    config
}

#[tokio::test]
async fn over_https_discovery_and_registration_work_and_send_the_token() {
    let pki = Pki::new();
    let (fake, addr) = start_fake_with(Some(pki.server(&[b"http/1.1"], true))).await;
    let registry = ConsulRegistry::new(https_config(addr, &pki, &pki.ca, true)).unwrap();
    let mut watch = registry.watch("orders");
    assert!(next(&mut watch, Duration::from_secs(2)).await.is_empty());
    let registered = registry
        .register("orders", instance("a", 1), Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(
        next(&mut watch, Duration::from_secs(1)).await,
        vec![instance("a", 1)]
    );
    registered.deregister().await.unwrap();
    assert!(next(&mut watch, Duration::from_secs(1)).await.is_empty());
    let tokens = fake.tokens.lock().unwrap().clone();
    assert!(tokens.len() >= 4, "{tokens:?}");
    assert!(tokens.iter().all(|t| t == "s3cret-token"), "{tokens:?}");
    // The token never shows in the registry's settings as logged.
    let shown = format!("{:?}", https_config(addr, &pki, &pki.ca, true));
    assert!(!shown.contains("s3cret-token"), "{shown}");
}

#[tokio::test]
async fn over_https_an_unknown_ca_or_a_missing_client_certificate_is_named() {
    let pki = Pki::new();
    let (_fake, addr) = start_fake_with(Some(pki.server(&[b"http/1.1"], true))).await;
    let registry = ConsulRegistry::new(https_config(addr, &pki, &pki.other_ca, true)).unwrap();
    let refused = registry
        .register("orders", instance("a", 1), Duration::from_secs(3))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    let registry = ConsulRegistry::new(https_config(addr, &pki, &pki.ca, false)).unwrap();
    let refused = registry
        .register("orders", instance("a", 1), Duration::from_secs(3))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("the server asked for a client certificate and none is configured"),
        "{refused}"
    );

    // https:// without a TLS config, and http:// with one, are refused up front.
    let mut config = https_config(addr, &pki, &pki.ca, true);
    config.tls = None;
    assert!(ConsulRegistry::new(config).is_err());
    let mut config = https_config(addr, &pki, &pki.ca, true);
    config.address = format!("http://{addr}");
    assert!(ConsulRegistry::new(config).is_err());
}
