//! The nacos registry against a fake Nacos server implementing the open API v1 endpoints
//! remora uses as Nacos documents them: login for an access token, register, beat
//! (code 20404 for an unknown instance), deregister and the instance list, with
//! ephemeral instances turning unhealthy and then removed when their beats stop. Traffic
//! follows health, `enabled` and weight through a sidecar, an outage serves the last
//! instances stale, a malformed entry is ignored and counted, and a registration beats,
//! comes back after the server forgets it and leaves on shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use remora::discovery::{Instance, NacosConfig, NacosRegistry, Registry, RegistryTls};
use serde_json::{json, Value};

use crate::support::fake_server::{outage_keeps_serving_stale, served_by};
use crate::support::pki::Pki;
use crate::support::*;

/// One instance the server holds.
struct Host {
    document: Value,
    /// Last heartbeat; `None` for an instance the test put (never expires).
    beat: Option<Instant>,
    beat_timeout: Duration,
    delete_timeout: Duration,
}

/// A Nacos server reduced to the open API v1 endpoints remora uses.
#[derive(Default)]
struct FakeNacos {
    /// `namespace|group@@service` -> `ip:port` -> host.
    services: Mutex<BTreeMap<String, BTreeMap<String, Host>>>,
    /// `(username, password)` when auth is on.
    auth: Option<(String, String)>,
    unavailable: AtomicBool,
    logins: AtomicUsize,
    registrations: AtomicUsize,
    beats: AtomicUsize,
    deregistrations: AtomicUsize,
    /// Revoking every token issued so far increments it.
    token_generation: AtomicUsize,
    /// Every query string the server saw (tokens checked by the test).
    queries: Mutex<Vec<BTreeMap<String, String>>>,
}

/// The access token the server issues in `generation`; a new generation revokes the
/// old tokens.
fn token(generation: usize) -> String {
    format!("token-{generation}")
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn params(text: &str) -> BTreeMap<String, String> {
    text.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

impl FakeNacos {
    fn key(namespace: &str, group: &str, service: &str) -> String {
        format!("{namespace}|{group}@@{service}")
    }

    /// Puts a host as the test wants it, without heartbeats.
    fn put(&self, service: &str, document: Value) {
        let addr = format!("{}:{}", document["ip"].as_str().unwrap(), document["port"]);
        let host = Host {
            document,
            beat: None,
            beat_timeout: Duration::ZERO,
            delete_timeout: Duration::ZERO,
        };
        let key = Self::key("ns-1", "DEFAULT_GROUP", service);
        self.services
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .insert(addr, host);
    }

    fn set(&self, service: &str, addr: SocketAddr, field: &str, value: Value) {
        let key = Self::key("ns-1", "DEFAULT_GROUP", service);
        let mut services = self.services.lock().unwrap();
        services
            .get_mut(&key)
            .unwrap()
            .get_mut(&addr.to_string())
            .unwrap()
            .document[field] = value;
    }

    fn host(&self, service: &str, addr: &str) -> Option<Value> {
        let key = Self::key("ns-1", "DEFAULT_GROUP", service);
        let services = self.services.lock().unwrap();
        services.get(&key)?.get(addr).map(|h| h.document.clone())
    }

    fn forget(&self, service: &str, addr: &str) {
        let key = Self::key("ns-1", "DEFAULT_GROUP", service);
        self.services
            .lock()
            .unwrap()
            .get_mut(&key)
            .unwrap()
            .remove(addr);
    }

    /// Marks hosts without recent beats unhealthy, and removes those silent for longer.
    fn expire(&self) {
        let now = Instant::now();
        for hosts in self.services.lock().unwrap().values_mut() {
            hosts.retain(|_, host| {
                host.beat
                    .is_none_or(|at| now.duration_since(at) < host.delete_timeout)
            });
            for host in hosts.values_mut() {
                if host
                    .beat
                    .is_some_and(|at| now.duration_since(at) >= host.beat_timeout)
                {
                    host.document["healthy"] = json!(false);
                }
            }
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: String| {
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        };
        if self.unavailable.load(Ordering::SeqCst) {
            return reply(StatusCode::SERVICE_UNAVAILABLE, "server is DOWN now".into());
        }
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = params(request.uri().query().unwrap_or(""));
        let body = request.into_body().collect().await.unwrap().to_bytes();
        if method == Method::POST && path == "/nacos/v1/auth/login" {
            self.logins.fetch_add(1, Ordering::SeqCst);
            let form = params(std::str::from_utf8(&body).unwrap());
            let given = (form["username"].clone(), form["password"].clone());
            if self.auth.as_ref() != Some(&given) {
                return reply(StatusCode::FORBIDDEN, "unknown user!".into());
            }
            let token = token(self.token_generation.load(Ordering::SeqCst));
            let answer = json!({"accessToken": token, "tokenTtl": 18000, "globalAdmin": false});
            return reply(StatusCode::OK, answer.to_string());
        }
        self.queries.lock().unwrap().push(query.clone());
        let current = token(self.token_generation.load(Ordering::SeqCst));
        if self.auth.is_some() && query.get("accessToken") != Some(&current) {
            return reply(StatusCode::FORBIDDEN, "user not found!".into());
        }
        let group = query
            .get("groupName")
            .cloned()
            .unwrap_or("DEFAULT_GROUP".into());
        let namespace = query.get("namespaceId").cloned().unwrap_or_default();
        let service = query["serviceName"].clone();
        let key = Self::key(&namespace, &group, &service);
        let addr = || format!("{}:{}", query["ip"], query["port"]);
        match (method, path.as_str()) {
            (Method::POST, "/nacos/v1/ns/instance") => {
                assert_eq!(query["ephemeral"], "true");
                self.registrations.fetch_add(1, Ordering::SeqCst);
                let metadata: Value = serde_json::from_str(&query["metadata"]).unwrap();
                let millis = |key: &str| {
                    Duration::from_millis(metadata[key].as_str().unwrap().parse().unwrap())
                };
                let host = Host {
                    beat: Some(Instant::now()),
                    beat_timeout: millis("preserved.heart.beat.timeout"),
                    delete_timeout: millis("preserved.ip.delete.timeout"),
                    document: json!({
                        "instanceId": format!("{}#{}#{}#{group}@@{service}", query["ip"], query["port"], query["clusterName"]),
                        "ip": query["ip"], "port": query["port"].parse::<u16>().unwrap(),
                        "weight": query["weight"].parse::<f64>().unwrap(),
                        "healthy": true, "enabled": query["enabled"] == "true", "ephemeral": true,
                        "clusterName": query["clusterName"], "serviceName": format!("{group}@@{service}"),
                        "metadata": metadata,
                    }),
                };
                self.services
                    .lock()
                    .unwrap()
                    .entry(key)
                    .or_default()
                    .insert(addr(), host);
                reply(StatusCode::OK, "ok".into())
            }
            (Method::PUT, "/nacos/v1/ns/instance/beat") => {
                self.beats.fetch_add(1, Ordering::SeqCst);
                let beat: Value = serde_json::from_str(&query["beat"]).unwrap();
                assert_eq!(beat["serviceName"], format!("{group}@@{service}"));
                let addr = format!("{}:{}", beat["ip"].as_str().unwrap(), beat["port"]);
                let mut services = self.services.lock().unwrap();
                let Some(host) = services
                    .get_mut(&key)
                    .and_then(|hosts| hosts.get_mut(&addr))
                else {
                    let answer = json!({"code": 20404, "clientBeatInterval": 5000});
                    return reply(StatusCode::OK, answer.to_string());
                };
                host.beat = Some(Instant::now());
                host.document["healthy"] = json!(true);
                let answer =
                    json!({"code": 10200, "clientBeatInterval": 5000, "lightBeatEnabled": true});
                reply(StatusCode::OK, answer.to_string())
            }
            (Method::DELETE, "/nacos/v1/ns/instance") => {
                self.deregistrations.fetch_add(1, Ordering::SeqCst);
                if let Some(hosts) = self.services.lock().unwrap().get_mut(&key) {
                    hosts.remove(&addr());
                }
                reply(StatusCode::OK, "ok".into())
            }
            (Method::GET, "/nacos/v1/ns/instance/list") => {
                assert_eq!(query["healthyOnly"], "false");
                let services = self.services.lock().unwrap();
                let hosts: Vec<Value> = services
                    .get(&key)
                    .map(|hosts| hosts.values().map(|h| h.document.clone()).collect())
                    .unwrap_or_default();
                let answer = json!({
                    "name": format!("{group}@@{service}"), "groupName": group,
                    "clusters": query.get("clusters").cloned().unwrap_or_default(),
                    "cacheMillis": 10000, "hosts": hosts, "lastRefTime": 0,
                    "checksum": "", "allIPs": false, "reachProtectionThreshold": false, "valid": true,
                });
                reply(StatusCode::OK, answer.to_string())
            }
            _ => reply(StatusCode::NOT_FOUND, format!("no route {path}")),
        }
    }
}

/// A fake Nacos on a loopback port, with its heartbeat checks running.
async fn start_fake(auth: Option<(&str, &str)>) -> (Arc<FakeNacos>, SocketAddr) {
    start_fake_with(auth, None).await
}

/// A fake Nacos, over TLS with `tls`.
async fn start_fake_with(
    auth: Option<(&str, &str)>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (Arc<FakeNacos>, SocketAddr) {
    let fake = Arc::new(FakeNacos {
        auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        ..FakeNacos::default()
    });
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

fn host(addr: SocketAddr) -> Value {
    json!({
        "instanceId": format!("{}#{}#DEFAULT#DEFAULT_GROUP@@inventory", addr.ip(), addr.port()),
        "ip": addr.ip().to_string(), "port": addr.port(), "weight": 1.0,
        "healthy": true, "enabled": true, "ephemeral": true, "clusterName": "DEFAULT",
        "serviceName": "DEFAULT_GROUP@@inventory", "metadata": {},
    })
}

/// A caller's sidecar discovering `inventory` in namespace `ns-1`, reading every 100 ms.
async fn caller(nacos: SocketAddr) -> remora::Sidecar {
    sidecar(&format!(
        "service: frontend\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         registries:\n  main: {{ nacos: {{ address: \"http://{nacos}\", namespace: ns-1, poll_interval: 100ms }} }}\n\
         services:\n  inventory:\n    listen: 127.0.0.1:0\n    discovery: {{ registry: main }}\n    balancer: {{ algorithm: round_robin }}\n"
    ))
    .await
}

#[tokio::test]
async fn traffic_follows_health_enabled_and_weight() {
    let (fake, nacos) = start_fake(None).await;
    let (one, _) = recording("one").await;
    let (two, _) = recording("two").await;
    fake.put("inventory", host(one));
    fake.put("inventory", host(two));
    let caller = caller(nacos).await;
    let limit = Duration::from_secs(3);
    assert!(eventually(limit, || served_by(&caller, &["one", "two"])).await);
    let listed = fake.queries.lock().unwrap()[0].clone();
    assert_eq!(listed["serviceName"], "inventory");
    assert_eq!(listed["groupName"], "DEFAULT_GROUP");
    assert_eq!(listed["namespaceId"], "ns-1");

    fake.set("inventory", two, "healthy", json!(false));
    assert!(
        eventually(limit, || served_by(&caller, &["one"])).await,
        "unhealthy leaves"
    );
    fake.set("inventory", two, "healthy", json!(true));
    fake.set("inventory", one, "enabled", json!(false));
    assert!(
        eventually(limit, || served_by(&caller, &["two"])).await,
        "disabled leaves"
    );
    fake.set("inventory", one, "enabled", json!(true));
    fake.set("inventory", two, "weight", json!(0.0));
    assert!(
        eventually(limit, || served_by(&caller, &["one"])).await,
        "weight 0 leaves"
    );

    let mut broken = host(two);
    broken["ip"] = json!("inventory.local");
    broken["port"] = json!(1);
    fake.put("inventory", broken);
    let admin = caller.addrs().admin.unwrap();
    let series =
        "remora_discovery_malformed_entries_total{registry=\"nacos\",service=\"inventory\"}";
    assert!(
        eventually(limit, || async {
            metric_or_zero(admin, series).await == 1.0
        })
        .await,
        "the malformed entry is counted, once"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metric(admin, series).await, 1.0, "not again at every read");
    assert!(served_by(&caller, &["one"]).await);
}

#[tokio::test]
async fn an_outage_keeps_the_last_instances_serving_stale() {
    let (fake, nacos) = start_fake(None).await;
    let (one, _) = recording("one").await;
    fake.put("inventory", host(one));
    let caller = caller(nacos).await;
    assert!(eventually(Duration::from_secs(3), || served_by(&caller, &["one"])).await);
    outage_keeps_serving_stale(&caller, &fake.unavailable, &["one"]).await;
}

#[tokio::test]
async fn a_registration_beats_logs_in_again_returns_when_forgotten_and_leaves_on_shutdown() {
    let (fake, nacos) = start_fake(Some(("remora", "hunter2"))).await;
    let (app, _) = recording("self").await;
    let inbound = free_port();
    let registered = sidecar(&format!(
        "service: inventory\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         inbound: {{ listen: 127.0.0.1:{inbound}, app: {app} }}\n\
         registries:\n  main: {{ nacos: {{ address: \"http://{nacos}\", namespace: ns-1, cluster: c1, username: remora, password: hunter2 }} }}\n\
         register: {{ registry: main, address: 127.0.0.1:{inbound}, weight: 3, ttl: 1s, deregister_delay: 10ms, metadata: {{ zone: a }} }}\n"
    ))
    .await;
    let addr = format!("127.0.0.1:{inbound}");
    let limit = Duration::from_secs(3);
    assert!(eventually(limit, || async { fake.host("inventory", &addr).is_some() }).await);
    let document = fake.host("inventory", &addr).unwrap();
    assert_eq!(document["clusterName"], "c1");
    assert_eq!(document["weight"], 3.0);
    assert_eq!(document["metadata"]["zone"], "a");
    assert_eq!(document["metadata"]["preserved.heart.beat.timeout"], "1000");

    // Beats every third of the 1 s TTL keep it healthy well past the TTL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.host("inventory", &addr).unwrap()["healthy"], true);
    assert!(fake.beats.load(Ordering::SeqCst) >= 3);

    // Forgotten by the server: the next beat's 20404 registers it again.
    fake.forget("inventory", &addr);
    assert!(eventually(limit, || async { fake.host("inventory", &addr).is_some() }).await);
    assert!(fake.registrations.load(Ordering::SeqCst) >= 2);

    // Every request carried the token; the password never shows in /config.
    assert_eq!(fake.logins.load(Ordering::SeqCst), 1);
    assert!(fake
        .queries
        .lock()
        .unwrap()
        .iter()
        .all(|q| q["accessToken"].starts_with("token-")));

    // The server revokes the token: a beat is refused (403), the next logs in again.
    fake.token_generation.fetch_add(1, Ordering::SeqCst);
    assert!(
        eventually(limit, || async { fake.logins.load(Ordering::SeqCst) == 2 }).await,
        "logged in again after a 403"
    );
    let beats = fake.beats.load(Ordering::SeqCst);
    assert!(
        eventually(limit, || async {
            fake.beats.load(Ordering::SeqCst) > beats + 1
        })
        .await
    );
    assert_eq!(fake.host("inventory", &addr).unwrap()["healthy"], true);
    let admin = registered.addrs().admin.unwrap();
    let shown = get(&format!("http://{admin}/config")).await.2;
    assert!(
        !shown.contains("hunter2") && shown.contains("<redacted>"),
        "{shown}"
    );

    registered.shutdown().await;
    assert_eq!(fake.deregistrations.load(Ordering::SeqCst), 1);
    assert!(
        fake.host("inventory", &addr).is_none(),
        "deregistered at once"
    );
}

#[tokio::test]
async fn a_dropped_registration_turns_unhealthy_then_disappears() {
    let (fake, nacos) = start_fake(None).await;
    let mut config = NacosConfig::new(format!("http://{nacos}"));
    config.namespace = "ns-1".into();
    config.poll_interval = Duration::from_millis(100);
    let registry = NacosRegistry::new(config).unwrap();
    let instance = Instance::new("127.0.0.1:9".parse().unwrap()).with_id("gone");
    let registration = registry
        .register("inventory", instance, Duration::from_secs(1))
        .await
        .unwrap();
    let mut watch = registry.watch("inventory");
    let first = tokio::time::timeout(
        Duration::from_secs(2),
        futures_util::StreamExt::next(&mut watch),
    );
    assert_eq!(first.await.unwrap().unwrap().unwrap().len(), 1);
    drop(registration);
    let dropped = Instant::now();
    let next = tokio::time::timeout(
        Duration::from_secs(3),
        futures_util::StreamExt::next(&mut watch),
    );
    assert!(
        next.await.unwrap().unwrap().unwrap().is_empty(),
        "unhealthy: no traffic"
    );
    assert!(
        dropped.elapsed() >= Duration::from_millis(600),
        "held until the TTL ran out"
    );
    assert!(
        fake.host("inventory", "127.0.0.1:9").is_some(),
        "still listed, unhealthy"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            fake.host("inventory", "127.0.0.1:9").is_none()
        })
        .await
    );
}

#[tokio::test]
async fn over_https_the_token_and_the_client_certificate_are_presented() {
    let pki = Pki::new();
    let tls = Some(pki.server(&[b"http/1.1"], true));
    let (fake, nacos) = start_fake_with(Some(("remora", "hunter2")), tls).await;
    let https = |ca: &std::path::Path, present: bool| {
        let mut config = NacosConfig::new(format!("https://{nacos}"));
        config.namespace = "ns-1".into();
        config.poll_interval = Duration::from_millis(100);
        config.username = Some("remora".into());
        config.password = Some("hunter2".into());
        config.tls = Some(RegistryTls {
            config: pki.client(ca, present),
            server_name: None,
        });
        NacosRegistry::new(config).unwrap()
    };
    let registry = https(&pki.ca, true);
    let instance = Instance::new("127.0.0.1:9".parse().unwrap()).with_id("tls-1");
    let registration = registry
        .register("inventory", instance, Duration::from_secs(3))
        .await
        .unwrap();
    let mut watch = registry.watch("inventory");
    let first = tokio::time::timeout(
        Duration::from_secs(2),
        futures_util::StreamExt::next(&mut watch),
    );
    let snapshot = first.await.unwrap().unwrap().unwrap();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].addr, "127.0.0.1:9".parse().unwrap());
    registration.deregister().await.unwrap();
    assert!(fake.host("inventory", "127.0.0.1:9").is_none());
    assert!(fake
        .queries
        .lock()
        .unwrap()
        .iter()
        .all(|q| q["accessToken"].starts_with("token-")));

    let refused = https(&pki.other_ca, true)
        .register(
            "inventory",
            Instance::new("127.0.0.1:9".parse().unwrap()),
            Duration::from_secs(3),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    assert!(!refused.contains("hunter2"), "{refused}");
}
