//! The eureka registry against a fake Eureka server that implements the REST endpoints
//! remora uses as Eureka documents them: register, renew (404 for an unknown instance),
//! cancel, full fetch and delta fetch with `apps__hashcode`, leases that expire. Traffic
//! follows status changes through a sidecar, an outage serves the last instances stale,
//! missed deltas are caught by the hash code, a malformed entry is ignored and counted,
//! and a registration renews, comes back after the server forgets it, and leaves on
//! shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use remora::discovery::{EurekaConfig, EurekaRegistry, Instance, Registry, RegistryTls};
use serde_json::{json, Value};

use crate::support::fake_server::{outage_keeps_serving_stale, served_by};
use crate::support::pki::Pki;
use crate::support::*;

/// One instance the server holds.
struct Lease {
    document: Value,
    /// `None`: no lease (put by the test itself).
    expires: Option<Instant>,
    duration: Duration,
}

/// A Eureka server reduced to the endpoints remora uses.
#[derive(Default)]
struct FakeEureka {
    instances: Mutex<BTreeMap<String, Lease>>,
    /// Recently changed instances, with their `actionType`: what a delta returns.
    recent: Mutex<Vec<Value>>,
    /// Answers 503 to everything while set.
    unavailable: AtomicBool,
    full_fetches: AtomicUsize,
    delta_fetches: AtomicUsize,
    renewals: AtomicUsize,
    registrations: AtomicUsize,
    cancels: AtomicUsize,
}

impl FakeEureka {
    /// Stores `document` (an instance) and records the change for deltas.
    fn put(&self, document: Value, lease: Option<Duration>) {
        let id = document["instanceId"].as_str().unwrap().to_string();
        let action = if self.instances.lock().unwrap().contains_key(&id) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.changed(&document, action);
        let duration = lease.unwrap_or_default();
        let entry = Lease {
            document,
            expires: lease.map(|d| Instant::now() + d),
            duration,
        };
        self.instances.lock().unwrap().insert(id, entry);
    }

    fn remove(&self, id: &str) -> bool {
        let removed = self.instances.lock().unwrap().remove(id);
        if let Some(lease) = &removed {
            self.changed(&lease.document, "DELETED");
        }
        removed.is_some()
    }

    fn changed(&self, document: &Value, action: &str) {
        let mut change = document.clone();
        change["actionType"] = json!(action);
        self.recent.lock().unwrap().push(change);
    }

    /// Sets an instance's status, as an operator (or the instance) would.
    fn set_status(&self, id: &str, status: &str) {
        let mut document = self.instances.lock().unwrap()[id].document.clone();
        document["status"] = json!(status);
        let lease = self.instances.lock().unwrap()[id]
            .expires
            .map(|_| Duration::from_secs(3600));
        self.put(document, lease);
    }

    /// Forgets an instance without a trace in the deltas (a restarted server).
    fn forget(&self, id: &str) {
        self.instances.lock().unwrap().remove(id);
    }

    fn document(&self, id: &str) -> Option<Value> {
        let instances = self.instances.lock().unwrap();
        instances.get(id).map(|lease| lease.document.clone())
    }

    /// Evicts instances whose lease ran out.
    fn expire(&self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .instances
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, lease)| lease.expires.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove(&id);
        }
    }

    /// Eureka's reconcile hash code of the whole registry.
    fn hashcode(&self) -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for lease in self.instances.lock().unwrap().values() {
            let status = lease.document["status"].as_str().unwrap_or("UNKNOWN");
            *counts.entry(status.to_string()).or_default() += 1;
        }
        counts.iter().map(|(s, n)| format!("{s}_{n}_")).collect()
    }

    /// `{"applications": ...}` of `documents`, grouped by app.
    fn applications(&self, documents: Vec<Value>) -> Value {
        let mut apps: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for document in documents {
            let app = document["app"].as_str().unwrap().to_string();
            apps.entry(app).or_default().push(document);
        }
        let application: Vec<Value> = apps
            .into_iter()
            .map(|(name, instance)| json!({"name": name, "instance": instance}))
            .collect();
        json!({"applications": {
            "versions__delta": "1",
            "apps__hashcode": self.hashcode(),
            "application": application,
        }})
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: String| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        };
        if self.unavailable.load(Ordering::SeqCst) {
            return reply(StatusCode::SERVICE_UNAVAILABLE, String::new());
        }
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let accept = request.headers().get("accept").cloned();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let parts: Vec<&str> = path.trim_start_matches("/eureka/apps").split('/').collect();
        match (method, parts.as_slice()) {
            (Method::GET, [""]) | (Method::GET, ["", "delta"]) => {
                assert_eq!(accept.unwrap(), "application/json", "JSON, not XML");
                let documents = if parts.len() == 1 {
                    self.full_fetches.fetch_add(1, Ordering::SeqCst);
                    let instances = self.instances.lock().unwrap();
                    instances.values().map(|l| l.document.clone()).collect()
                } else {
                    self.delta_fetches.fetch_add(1, Ordering::SeqCst);
                    self.recent.lock().unwrap().clone()
                };
                reply(StatusCode::OK, self.applications(documents).to_string())
            }
            (Method::POST, ["", app]) => {
                let document: Value = serde_json::from_slice(&body).unwrap();
                let mut document = document["instance"].clone();
                assert_eq!(document["app"], *app);
                assert_eq!(
                    document["dataCenterInfo"]["@class"],
                    "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"
                );
                let lease = document["leaseInfo"]["durationInSecs"].as_u64().unwrap();
                document["leaseInfo"]["evictionDurationInSecs"] = json!(lease);
                self.registrations.fetch_add(1, Ordering::SeqCst);
                self.put(document, Some(Duration::from_secs(lease)));
                reply(StatusCode::NO_CONTENT, String::new())
            }
            (Method::PUT, ["", _app, id]) => {
                self.renewals.fetch_add(1, Ordering::SeqCst);
                let mut instances = self.instances.lock().unwrap();
                let Some(lease) = instances.get_mut(*id) else {
                    return reply(StatusCode::NOT_FOUND, String::new());
                };
                lease.expires = Some(Instant::now() + lease.duration);
                reply(StatusCode::OK, String::new())
            }
            (Method::DELETE, ["", _app, id]) => {
                self.cancels.fetch_add(1, Ordering::SeqCst);
                match self.remove(id) {
                    true => reply(StatusCode::OK, String::new()),
                    false => reply(StatusCode::NOT_FOUND, String::new()),
                }
            }
            _ => reply(StatusCode::NOT_FOUND, format!("no route {path}")),
        }
    }
}

/// A fake Eureka on a loopback port, with its lease evictions running.
async fn start_fake() -> (Arc<FakeEureka>, SocketAddr) {
    serve(Arc::new(FakeEureka::default()), None).await
}

/// Serves `fake` on a loopback port, over TLS with `tls`, with its lease evictions running.
async fn serve(
    fake: Arc<FakeEureka>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (Arc<FakeEureka>, SocketAddr) {
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

/// An instance document as a Eureka client registers it.
fn eureka_instance(app: &str, id: &str, addr: SocketAddr, status: &str) -> Value {
    json!({
        "instanceId": id, "hostName": addr.ip().to_string(), "app": app,
        "ipAddr": addr.ip().to_string(), "status": status,
        "port": {"$": addr.port(), "@enabled": "true"},
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "metadata": {"@class": "java.util.Collections$EmptyMap"},
    })
}

/// A caller's sidecar discovering `inventory` in the fake, polling every 100 ms.
async fn caller(eureka: SocketAddr) -> remora::Sidecar {
    sidecar(&format!(
        "service: frontend\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         registries:\n  main: {{ eureka: {{ url: \"http://{eureka}/eureka\", poll_interval: 100ms }} }}\n\
         services:\n  inventory:\n    listen: 127.0.0.1:0\n    discovery: {{ registry: main }}\n    balancer: {{ algorithm: round_robin }}\n"
    ))
    .await
}

#[tokio::test]
async fn traffic_follows_status_changes_deltas_and_full_fetches() {
    let (fake, eureka) = start_fake().await;
    let (one, _) = recording("one").await;
    let (two, _) = recording("two").await;
    let (three, _) = recording("three").await;
    fake.put(eureka_instance("INVENTORY", "one", one, "UP"), None);
    fake.put(eureka_instance("INVENTORY", "two", two, "STARTING"), None);
    fake.put(eureka_instance("USERS", "u", three, "UP"), None);
    let caller = caller(eureka).await;
    let limit = Duration::from_secs(3);
    assert!(
        eventually(limit, || served_by(&caller, &["one"])).await,
        "STARTING is held out"
    );

    fake.set_status("two", "UP");
    assert!(
        eventually(limit, || served_by(&caller, &["one", "two"])).await,
        "UP joins"
    );
    fake.set_status("one", "OUT_OF_SERVICE");
    assert!(
        eventually(limit, || served_by(&caller, &["two"])).await,
        "OUT_OF_SERVICE leaves"
    );
    fake.set_status("two", "DOWN");
    fake.set_status("one", "UP");
    assert!(
        eventually(limit, || served_by(&caller, &["one"])).await,
        "DOWN leaves"
    );
    let (full, deltas) = (
        fake.full_fetches.load(Ordering::SeqCst),
        fake.delta_fetches.load(Ordering::SeqCst),
    );
    assert!(
        full == 1 && deltas >= 3,
        "deltas, not full fetches: {full} full, {deltas} deltas"
    );
    let full_before = fake.full_fetches.load(Ordering::SeqCst);

    // A change the deltas never show (their window passed): the hash code no longer
    // matches, so the watch fetches in full and finds it.
    fake.recent.lock().unwrap().clear();
    fake.instances
        .lock()
        .unwrap()
        .get_mut("two")
        .unwrap()
        .document["status"] = json!("UP");
    assert!(
        eventually(limit, || served_by(&caller, &["one", "two"])).await,
        "found by a full fetch"
    );
    assert!(fake.full_fetches.load(Ordering::SeqCst) > full_before);

    // A malformed entry (no IP address) is ignored, counted, and the rest keep serving.
    let mut broken = eureka_instance("INVENTORY", "broken", one, "UP");
    broken["ipAddr"] = json!("inventory.local");
    fake.put(broken, None);
    let admin = caller.addrs().admin.unwrap();
    let series =
        "remora_discovery_malformed_entries_total{registry=\"eureka\",service=\"inventory\"}";
    assert!(
        eventually(limit, || async {
            metric_or_zero(admin, series).await >= 1.0
        })
        .await,
        "the malformed entry is counted"
    );
    assert!(served_by(&caller, &["one", "two"]).await);
    let endpoints = get(&format!("http://{admin}/endpoints")).await.2;
    assert!(!endpoints.contains("broken"), "{endpoints}");
}

#[tokio::test]
async fn an_outage_keeps_the_last_instances_serving_stale() {
    let (fake, eureka) = start_fake().await;
    let (one, _) = recording("one").await;
    fake.put(eureka_instance("INVENTORY", "one", one, "UP"), None);
    let caller = caller(eureka).await;
    assert!(eventually(Duration::from_secs(3), || served_by(&caller, &["one"])).await);

    outage_keeps_serving_stale(&caller, &fake.unavailable, &["one"]).await;
}

#[tokio::test]
async fn a_registration_renews_returns_when_forgotten_survives_a_reload_and_cancels_on_shutdown() {
    let (fake, eureka) = start_fake().await;
    let (app, _) = recording("self").await;
    let inbound = free_port();
    let yaml = format!(
        "service: inventory\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         inbound: {{ listen: 127.0.0.1:{inbound}, app: {app} }}\n\
         registries:\n  main: {{ eureka: {{ url: \"http://{eureka}/eureka\", renew_interval: 200ms }} }}\n\
         register: {{ registry: main, address: 127.0.0.1:{inbound}, id: inv-1, ttl: 2s, deregister_delay: 10ms, metadata: {{ zone: a }} }}\n"
    );
    let registered = sidecar(&yaml).await;
    let limit = Duration::from_secs(3);
    assert!(eventually(limit, || async { fake.document("inv-1").is_some() }).await);
    let document = fake.document("inv-1").unwrap();
    assert_eq!(document["app"], "INVENTORY");
    assert_eq!(document["ipAddr"], "127.0.0.1");
    assert_eq!(document["status"], "UP");
    assert_eq!(document["port"], json!({"$": inbound, "@enabled": "true"}));
    assert_eq!(document["leaseInfo"]["durationInSecs"], 2);
    assert_eq!(document["metadata"]["zone"], "a");

    // Renewed every 200 ms: alive well past its 2 s lease.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(fake.document("inv-1").is_some(), "renewals keep the lease");
    assert!(fake.renewals.load(Ordering::SeqCst) >= 8);

    // The server forgets it (a restart): the next renewal's 404 registers it again.
    fake.forget("inv-1");
    assert!(
        eventually(limit, || async { fake.document("inv-1").is_some() }).await,
        "re-registered"
    );
    assert!(fake.registrations.load(Ordering::SeqCst) >= 2);

    // Discovered by a caller, then cancelled on shutdown.
    let caller = caller(eureka).await;
    assert!(eventually(limit, || served_by(&caller, &["self"])).await);

    // A reload that leaves the registry and registration alone keeps both: no new
    // registration, no cancel, no new full fetch by the caller's watch.
    let (registrations, full) = (
        fake.registrations.load(Ordering::SeqCst),
        fake.full_fetches.load(Ordering::SeqCst),
    );
    let config = |yaml: &str| remora::build::parse("test.yaml", yaml).unwrap();
    registered.handle().reload(config(&yaml)).await.unwrap();
    let caller_yaml = format!(
        "service: frontend\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         registries:\n  main: {{ eureka: {{ url: \"http://{eureka}/eureka\", poll_interval: 100ms }} }}\n\
         services:\n  inventory:\n    listen: 127.0.0.1:0\n    discovery: {{ registry: main }}\n    balancer: {{ algorithm: round_robin }}\n"
    );
    caller.handle().reload(config(&caller_yaml)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(served_by(&caller, &["self"]).await);
    assert_eq!(fake.registrations.load(Ordering::SeqCst), registrations);
    assert_eq!(fake.full_fetches.load(Ordering::SeqCst), full);
    assert_eq!(fake.cancels.load(Ordering::SeqCst), 0);
    registered.shutdown().await;
    assert_eq!(fake.cancels.load(Ordering::SeqCst), 1);
    assert!(fake.document("inv-1").is_none(), "cancelled at once");
}

#[tokio::test]
async fn a_dropped_registration_expires_with_its_lease() {
    let (fake, eureka) = start_fake().await;
    let mut config = EurekaConfig::new(format!("http://{eureka}"));
    config.renew_interval = Duration::from_millis(100);
    let registry = EurekaRegistry::new(config).unwrap();
    let instance = Instance::new("127.0.0.1:9".parse().unwrap()).with_id("gone");
    let registration = registry
        .register("orders", instance, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(registration.service(), "ORDERS");
    assert!(fake.document("gone").is_some());
    drop(registration);
    let dropped = Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || async {
            fake.document("gone").is_none()
        })
        .await
    );
    assert!(
        dropped.elapsed() >= Duration::from_millis(700),
        "held until the lease ran out"
    );
}

#[tokio::test]
async fn over_https_with_a_client_certificate_watch_and_registration_work() {
    let pki = Pki::new();
    let tls = Some(pki.server(&[b"http/1.1"], true));
    let (fake, eureka) = serve(Arc::new(FakeEureka::default()), tls).await;
    let https = |ca: &std::path::Path, present: bool| {
        let mut config = EurekaConfig::new(format!("https://{eureka}/eureka"));
        config.poll_interval = Duration::from_millis(100);
        config.tls = Some(RegistryTls {
            config: pki.client(ca, present),
            server_name: None,
        });
        EurekaRegistry::new(config).unwrap()
    };
    let registry = https(&pki.ca, true);
    let instance = Instance::new("127.0.0.1:9".parse().unwrap()).with_id("tls-1");
    let registration = registry
        .register("orders", instance.clone(), Duration::from_secs(3))
        .await
        .unwrap();
    let mut watch = registry.watch("orders");
    let first = tokio::time::timeout(Duration::from_secs(2), watch.next());
    assert_eq!(first.await.unwrap().unwrap().unwrap(), vec![instance]);
    registration.deregister().await.unwrap();
    assert!(fake.document("tls-1").is_none());

    let refused = https(&pki.ca, false)
        .register(
            "orders",
            Instance::new("127.0.0.1:9".parse().unwrap()),
            Duration::from_secs(3),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("the server asked for a client certificate and none is configured"),
        "{refused}"
    );
}

#[tokio::test]
async fn watches_of_one_registry_share_one_poller_that_stops_with_them() {
    let (fake, eureka) = start_fake().await;
    fake.put(
        eureka_instance("ORDERS", "o", "127.0.0.1:1".parse().unwrap(), "UP"),
        None,
    );
    fake.put(
        eureka_instance("USERS", "u", "127.0.0.1:2".parse().unwrap(), "UP"),
        None,
    );
    let mut config = EurekaConfig::new(format!("http://{eureka}"));
    config.poll_interval = Duration::from_millis(50);
    let registry = EurekaRegistry::new(config).unwrap();
    let mut orders = registry.watch("orders");
    let mut users = registry.watch("users");
    for (watch, id) in [(&mut orders, "o"), (&mut users, "u")] {
        let first = tokio::time::timeout(Duration::from_secs(2), watch.next());
        assert_eq!(first.await.unwrap().unwrap().unwrap()[0].id, id);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.full_fetches.load(Ordering::SeqCst),
        1,
        "one copy for both"
    );
    let deltas = fake.delta_fetches.load(Ordering::SeqCst);
    assert!(
        deltas <= 8,
        "one poller, not two: {deltas} deltas in 300ms at 50ms"
    );

    drop((orders, users));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = fake.delta_fetches.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.delta_fetches.load(Ordering::SeqCst),
        stopped,
        "no watch, no polling"
    );

    // A new watch starts a new poller.
    let mut again = registry.watch("orders");
    let first = tokio::time::timeout(Duration::from_secs(2), again.next());
    assert_eq!(first.await.unwrap().unwrap().unwrap()[0].id, "o");
}
