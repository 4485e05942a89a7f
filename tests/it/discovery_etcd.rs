//! The etcd registry against a real etcd: registrations appear in watches, leases expire
//! when a sidecar dies, deregistration is immediate, and watches and registrations
//! survive an etcd restart and a compaction while disconnected.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use futures_util::StreamExt;
use remora::discovery::{
    DiscoveryError, EtcdConfig, EtcdRegistry, Instance, Registry, RegistryTls, Snapshots,
};

use crate::support::etcd_harness::{Etcd, EtcdTls, Gate};
use crate::support::pki::Pki;

fn registry(endpoint: String) -> EtcdRegistry {
    let mut config = EtcdConfig::new(vec![endpoint]);
    config.prefix = "/test/services".into();
    config.min_backoff = Duration::from_millis(100);
    config.max_backoff = Duration::from_millis(500);
    config.connect_timeout = Duration::from_millis(500);
    config.request_timeout = Duration::from_secs(2);
    EtcdRegistry::new(config).unwrap()
}

fn instance(id: &str, port: u16) -> Instance {
    Instance::new(([10, 0, 0, 7], port).into()).with_id(id)
}

fn ids(snapshot: &[Instance]) -> BTreeSet<String> {
    snapshot.iter().map(|i| i.id.clone()).collect()
}

/// Items of `watch` until a snapshot satisfies `wanted`; returns it and the errors seen.
async fn until(
    watch: &mut Snapshots,
    within: Duration,
    wanted: impl Fn(&[Instance]) -> bool,
) -> (Vec<Instance>, Vec<DiscoveryError>) {
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let item = tokio::time::timeout_at(deadline, watch.next())
            .await
            .unwrap_or_else(|_| panic!("no wanted snapshot within {within:?}; errors: {errors:?}"))
            .expect("the watch stream never ends");
        match item {
            Ok(snapshot) if wanted(&snapshot) => return (snapshot, errors),
            Ok(_) => {}
            Err(error) => errors.push(error),
        }
    }
}

fn has(ids_wanted: &'static [&'static str]) -> impl Fn(&[Instance]) -> bool {
    move |s| ids(s) == ids_wanted.iter().map(|s| s.to_string()).collect()
}

async fn lease_of(etcd: &Etcd, key: &str) -> Option<i64> {
    let mut client = etcd.client().await;
    let found = client.get(key, None).await.unwrap();
    found.kvs().first().map(|kv| kv.lease())
}

#[tokio::test]
async fn registrations_appear_expire_and_deregister() {
    let etcd = Etcd::start().await;
    let registry = registry(etcd.endpoint());
    let mut watch = registry.watch("orders");
    let (first, _) = until(&mut watch, Duration::from_secs(5), |_| true).await;
    assert!(first.is_empty());

    let ttl = Duration::from_secs(2);
    let started = Instant::now();
    let crashed = registry
        .register("orders", instance("a", 1), ttl)
        .await
        .unwrap();
    let (snapshot, _) = until(&mut watch, Duration::from_secs(1), has(&["a"])).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(snapshot[0], instance("a", 1));

    let leaving = registry
        .register("orders", instance("b", 2), ttl)
        .await
        .unwrap();
    until(&mut watch, Duration::from_secs(1), has(&["a", "b"])).await;

    // The keep-alive holds both past their TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut client = etcd.client().await;
    let listed = client
        .get(
            "/test/services/orders/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(listed.kvs().len(), 2, "leases kept alive past the TTL");

    let deregistered = Instant::now();
    leaving.deregister().await.unwrap();
    until(&mut watch, Duration::from_secs(1), has(&["a"])).await;
    assert!(deregistered.elapsed() < Duration::from_secs(1));

    // A crash: the keep-alive stops, and etcd forgets the instance at the lease's end.
    let dropped = Instant::now();
    drop(crashed);
    until(&mut watch, Duration::from_secs(8), has(&[])).await;
    let gone_after = dropped.elapsed();
    assert!(
        gone_after >= Duration::from_millis(500),
        "removed by lease expiry, not at once ({gone_after:?})"
    );
}

#[tokio::test]
async fn watch_and_registration_survive_a_lost_lease_and_an_etcd_restart() {
    let mut etcd = Etcd::start().await;
    let registry = registry(etcd.endpoint());
    let mut watch = registry.watch("orders");
    let registration = registry
        .register("orders", instance("a", 1), Duration::from_secs(3))
        .await
        .unwrap();
    until(&mut watch, Duration::from_secs(2), has(&["a"])).await;
    let key = "/test/services/orders/a";
    let first_lease = lease_of(&etcd, key).await.unwrap();

    // Someone revokes the lease: the key goes, the keep-alive notices and re-registers.
    etcd.client().await.lease_revoke(first_lease).await.unwrap();
    until(&mut watch, Duration::from_secs(2), has(&[])).await;
    until(&mut watch, Duration::from_secs(5), has(&["a"])).await;
    let second_lease = lease_of(&etcd, key).await.unwrap();
    assert_ne!(second_lease, first_lease, "a new lease was granted");

    etcd.restart().await;
    // The watch reports the outage, then resumes with a fresh snapshot.
    let (_, errors) = until(&mut watch, Duration::from_secs(10), has(&["a"])).await;
    assert!(!errors.is_empty(), "the restart was reported as an outage");
    // And it follows changes made after the restart.
    let mut client = etcd.client().await;
    client
        .put("/test/services/orders/b", instance("b", 2).to_json(), None)
        .await
        .unwrap();
    until(&mut watch, Duration::from_secs(2), has(&["a", "b"])).await;

    // The registration was re-established on a new lease after the restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lease = lease_of(&etcd, key).await;
        if lease.is_some_and(|l| l != second_lease) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no re-grant after the restart: {lease:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    registration.deregister().await.unwrap();
    until(&mut watch, Duration::from_secs(1), has(&["b"])).await;
}

#[tokio::test]
async fn a_revision_compacted_while_disconnected_leads_to_a_relist() {
    let etcd = Etcd::start().await;
    let gate = Gate::start(etcd.addr()).await;
    let registry = registry(gate.endpoint());
    let mut client = etcd.client().await;
    let put = |id: &str, port| {
        (
            format!("/test/services/orders/{id}"),
            instance(id, port).to_json(),
        )
    };
    let (key, value) = put("a", 1);
    client.put(key, value, None).await.unwrap();
    let mut watch = registry.watch("orders");
    until(&mut watch, Duration::from_secs(5), has(&["a"])).await;

    gate.cut();
    // While the watch is away: "a" leaves, "b" arrives, and history is compacted, so
    // the delete of "a" can no longer be replayed.
    client
        .delete("/test/services/orders/a", None)
        .await
        .unwrap();
    let (key, value) = put("b", 2);
    let written = client.put(key, value, None).await.unwrap();
    let revision = written.header().unwrap().revision();
    client.compact(revision, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.open();

    let (snapshot, _) = until(&mut watch, Duration::from_secs(10), has(&["b"])).await;
    assert_eq!(snapshot, vec![instance("b", 2)]);
}

// ---- over TLS ----

/// A registry of the etcd's HTTPS listener, trusting `ca`, with the client certificate
/// when `present`.
fn tls_registry(etcd: &Etcd, pki: &Pki, ca: &std::path::Path, present: bool) -> EtcdRegistry {
    let mut config = EtcdConfig::new(vec![etcd.tls_endpoint()]);
    config.prefix = "/test/services".into();
    config.min_backoff = Duration::from_millis(100);
    config.max_backoff = Duration::from_millis(500);
    config.connect_timeout = Duration::from_millis(500);
    config.request_timeout = Duration::from_secs(2);
    config.tls = Some(RegistryTls {
        config: pki.client(ca, present),
        server_name: None,
    });
    EtcdRegistry::new(config).unwrap()
}

async fn etcd_over_tls(pki: &Pki) -> Etcd {
    Etcd::start_tls(EtcdTls {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: pki.ca.clone(),
    })
    .await
}

#[tokio::test]
async fn over_tls_with_a_client_certificate_watches_and_registrations_work() {
    let pki = Pki::new();
    let etcd = etcd_over_tls(&pki).await;
    let registry = tls_registry(&etcd, &pki, &pki.ca, true);
    let mut watch = registry.watch("orders");
    let (first, errors) = until(&mut watch, Duration::from_secs(5), |_| true).await;
    assert!(first.is_empty() && errors.is_empty(), "{errors:?}");

    let registered = registry
        .register("orders", instance("a", 1), Duration::from_secs(5))
        .await
        .unwrap();
    let (snapshot, _) = until(&mut watch, Duration::from_secs(2), has(&["a"])).await;
    assert_eq!(snapshot[0], instance("a", 1));
    // What remora wrote over TLS is what the plain listener reads.
    assert!(lease_of(&etcd, "/test/services/orders/a").await.is_some());
    registered.deregister().await.unwrap();
    until(&mut watch, Duration::from_secs(2), has(&[])).await;
}

#[tokio::test]
async fn over_tls_a_missing_client_certificate_or_an_unknown_ca_is_a_clear_error() {
    let pki = Pki::new();
    let etcd = etcd_over_tls(&pki).await;

    // The server refuses after the handshake: the error says what it sent and why.
    let anonymous = tls_registry(&etcd, &pki, &pki.ca, false);
    let refused = anonymous
        .register("orders", instance("a", 1), Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("the server asked for a client certificate and none is configured"),
        "names the missing certificate: {refused}"
    );
    let mut watch = anonymous.watch("orders");
    let outage = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        outage.contains("the server asked for a client certificate"),
        "{outage}"
    );

    let distrusting = tls_registry(&etcd, &pki, &pki.other_ca, true);
    let refused = distrusting
        .register("orders", instance("a", 1), Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("invalid peer certificate") && refused.contains("UnknownIssuer"),
        "names the untrusted server certificate: {refused}"
    );
}
