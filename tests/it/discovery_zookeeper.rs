//! The zookeeper registry against a real ZooKeeper, through running sidecars: instances
//! registered by Apache Curator itself get traffic and Curator reads remora's, instances
//! written as Curator writes them get traffic as they come and go, malformed ones are
//! ignored and counted, remora's own registration is an ephemeral znode holding
//! Curator's `ServiceInstance` JSON that a reload leaves alone, a shutdown deletes and a
//! dead sidecar's session expiry removes; an outage serves the last set stale, and a
//! restarted ZooKeeper gets the registration back and is listed again.

use std::time::Duration;

use serde_json::{json, Value};
use zookeeper_client::{Acls, Client, CreateMode};

use crate::support::curator_probe::CuratorProbe;
use crate::support::fake_server::served_by;
use crate::support::zk_harness::ZooKeeper;
use crate::support::*;

/// Generous on a loaded machine; polls end as soon as the condition holds.
const LIMIT: Duration = Duration::from_secs(10);

/// The YAML of a registry `main` on `zk`.
fn registry(zk: &ZooKeeper) -> String {
    format!(
        "registries:\n  main: {{ zookeeper: {{ servers: [\"{}\"], base: /services, session_timeout: 4s }} }}\n",
        zk.server()
    )
}

/// A caller's sidecar discovering `inventory` in `zk`.
async fn caller(zk: &ZooKeeper) -> remora::Sidecar {
    sidecar(&format!(
        "service: frontend\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         {}\
         services:\n  inventory:\n    listen: 127.0.0.1:0\n    discovery: {{ registry: main }}\n    balancer: {{ algorithm: round_robin }}\n",
        registry(zk)
    ))
    .await
}

/// The YAML of a sidecar in front of `app`, registering as `inventory`/`id` with a 2 s
/// session.
fn registered_yaml(zk: &ZooKeeper, app: std::net::SocketAddr, id: &str) -> String {
    let inbound = free_port();
    format!(
        "service: inventory\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         inbound: {{ listen: 127.0.0.1:{inbound}, app: {app} }}\n\
         {}\
         register: {{ registry: main, address: 127.0.0.1:{inbound}, id: {id}, ttl: 2s, deregister_delay: 100ms, metadata: {{ zone: a }} }}\n",
        registry(zk)
    )
}

/// Writes `name` as Curator does: an ephemeral znode of `client`'s session holding a
/// `ServiceInstance` with Spring Cloud's payload.
async fn put_curator(client: &Client, name: &str, addr: std::net::SocketAddr) {
    let document = json!({
        "name": "inventory", "id": name, "address": addr.ip().to_string(), "port": addr.port(),
        "sslPort": null,
        "payload": {"@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
                    "id": "inventory-1", "name": "inventory", "metadata": {"instance_status": "UP"}},
        "registrationTimeUTC": 1_700_000_000_000u64, "serviceType": "DYNAMIC",
        "uriSpec": {"parts": [{"value": "scheme", "variable": true}, {"value": "://", "variable": false}]}
    });
    put(client, name, document.to_string().as_bytes()).await;
}

async fn put(client: &Client, name: &str, data: &[u8]) {
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    client
        .mkdir("/services/inventory", &persistent)
        .await
        .unwrap();
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    client
        .create(&format!("/services/inventory/{name}"), data, &ephemeral)
        .await
        .unwrap();
}

/// The stat and JSON of `/services/inventory/<id>`, if it exists.
async fn znode(client: &Client, id: &str) -> Option<(zookeeper_client::Stat, Value)> {
    match client.get_data(&format!("/services/inventory/{id}")).await {
        Ok((data, stat)) => Some((stat, serde_json::from_slice(&data).unwrap())),
        Err(zookeeper_client::Error::NoNode) => None,
        Err(error) => panic!("read /services/inventory/{id}: {error}"),
    }
}

async fn endpoints(caller: &remora::Sidecar) -> String {
    let admin = caller.addrs().admin.unwrap();
    get(&format!("http://{admin}/endpoints")).await.2
}

#[tokio::test]
async fn curator_instances_get_traffic_as_they_come_and_go_and_malformed_ones_are_counted() {
    let zk = ZooKeeper::start().await;
    let client = zk.client().await;
    let (one, _) = recording("one").await;
    let (two, _) = recording("two").await;
    put_curator(&client, "one", one).await;
    let caller = caller(&zk).await;
    assert!(
        eventually(LIMIT, || served_by(&caller, &["one"])).await,
        "a Curator instance is discovered and gets traffic"
    );

    put_curator(&client, "two", two).await;
    assert!(
        eventually(LIMIT, || served_by(&caller, &["one", "two"])).await,
        "an added znode joins the rotation"
    );

    // A host name, a missing port, not JSON: each ignored, counted once, the rest serve.
    put(
        &client,
        "named",
        br#"{"address":"inventory.local","port":80}"#,
    )
    .await;
    put(
        &client,
        "ssl-only",
        br#"{"address":"10.0.0.1","port":null,"sslPort":443}"#,
    )
    .await;
    put(&client, "garbage", b"\x00not json").await;
    let admin = caller.addrs().admin.unwrap();
    let malformed =
        "remora_discovery_malformed_entries_total{registry=\"zookeeper\",service=\"inventory\"}";
    assert!(
        eventually(LIMIT, || async {
            metric_or_zero(admin, malformed).await == 3.0
        })
        .await,
        "three malformed znodes counted: {}",
        metric_or_zero(admin, malformed).await
    );
    assert!(served_by(&caller, &["one", "two"]).await);

    client
        .delete("/services/inventory/one", None)
        .await
        .unwrap();
    assert!(
        eventually(LIMIT, || served_by(&caller, &["two"])).await,
        "a deleted znode leaves the rotation"
    );
    // A disabled instance (Curator's `enabled: false`) takes no traffic.
    let (three, _) = recording("three").await;
    let disabled = json!({"name": "inventory", "id": "three", "address": "127.0.0.1",
        "port": three.port(), "serviceType": "DYNAMIC", "enabled": false});
    put(&client, "three", disabled.to_string().as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(served_by(&caller, &["two"]).await);
    assert_eq!(
        metric_or_zero(admin, malformed).await,
        3.0,
        "counted once each"
    );
}

#[tokio::test]
async fn curator_and_remora_find_each_other() {
    let zk = ZooKeeper::start().await;
    let curator = CuratorProbe::compile().await;
    let (app, _) = recording("remora").await;
    let remora = sidecar(&registered_yaml(&zk, app, "remora-1")).await;
    let (java_app, _) = recording("java").await;
    let java = curator
        .register(&zk.server(), "inventory", "java-1", java_app)
        .await;
    let caller = caller(&zk).await;
    assert!(
        eventually(LIMIT, || served_by(&caller, &["java", "remora"])).await,
        "an instance Curator registered gets traffic beside remora's"
    );

    // Curator reads remora's registration, payload and metadata included.
    let listed = curator.list(&zk.server(), "inventory").await;
    let inbound = remora
        .handle()
        .config()
        .register
        .as_ref()
        .unwrap()
        .address
        .addr()
        .expect("registered at an address");
    assert_eq!(
        listed,
        [
            format!(
                "java-1 127.0.0.1 {} DYNAMIC true java-1 {{zone=b}}",
                java_app.port()
            ),
            format!(
                "remora-1 127.0.0.1 {} DYNAMIC true remora-1 {{zone=a}}",
                inbound.port()
            ),
        ],
        "Curator's view of the service"
    );

    // Curator unregisters: the caller follows.
    java.stop().await;
    assert!(eventually(LIMIT, || served_by(&caller, &["remora"])).await);
}

#[tokio::test]
async fn registration_is_an_ephemeral_curator_instance_kept_by_reloads_deleted_on_shutdown_and_expired_on_death(
) {
    let zk = ZooKeeper::start().await;
    let client = zk.client().await;
    let (app_one, _) = recording("one").await;
    let (app_two, _) = recording("two").await;
    let yaml_one = registered_yaml(&zk, app_one, "one");
    let one = sidecar(&yaml_one).await;
    let two = sidecar(&registered_yaml(&zk, app_two, "two")).await;
    let caller = caller(&zk).await;
    assert!(
        eventually(LIMIT, || served_by(&caller, &["one", "two"])).await,
        "both registrations get traffic"
    );

    let (stat, document) = znode(&client, "one").await.expect("registered");
    assert_ne!(stat.ephemeral_owner, 0, "an ephemeral znode");
    let inbound = one
        .handle()
        .config()
        .register
        .as_ref()
        .unwrap()
        .address
        .addr()
        .expect("registered at an address");
    assert_eq!(document["name"], "inventory");
    assert_eq!(document["id"], "one");
    assert_eq!(document["address"], inbound.ip().to_string());
    assert_eq!(document["port"], inbound.port());
    assert_eq!(document["sslPort"], Value::Null);
    assert_eq!(document["serviceType"], "DYNAMIC");
    assert_eq!(document["uriSpec"], Value::Null);
    assert_eq!(document["enabled"], true);
    assert!(document["registrationTimeUTC"].as_u64().unwrap() > 1_700_000_000_000);
    let payload = &document["payload"];
    assert_eq!(
        payload["@class"],
        "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance"
    );
    assert_eq!(payload["id"], "one");
    assert_eq!(payload["metadata"], json!({"zone": "a"}));
    let fields: Vec<&str> = document
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "address",
            "enabled",
            "id",
            "name",
            "payload",
            "port",
            "registrationTimeUTC",
            "serviceType",
            "sslPort",
            "uriSpec"
        ],
        "exactly Curator's ServiceInstance fields"
    );

    // A reload that leaves the registration alone keeps the very same znode.
    let reloaded = format!("{yaml_one}drain_timeout: 7s\n");
    let config = remora::build::parse("test.yaml", &reloaded).unwrap_or_else(|e| panic!("{e}"));
    one.handle().reload(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (after, _) = znode(&client, "one").await.expect("still registered");
    assert_eq!(
        (after.czxid, after.ephemeral_owner),
        (stat.czxid, stat.ephemeral_owner)
    );

    // Someone deletes the znode while the session lives: it is created again in it.
    client
        .delete("/services/inventory/one", None)
        .await
        .unwrap();
    assert!(
        eventually(LIMIT, || async {
            znode(&client, "one").await.is_some_and(|(again, _)| {
                again.czxid != stat.czxid && again.ephemeral_owner == stat.ephemeral_owner
            })
        })
        .await,
        "created again in the same session"
    );

    // A graceful shutdown deletes the znode before draining.
    one.shutdown().await;
    assert!(znode(&client, "one").await.is_none(), "deleted on shutdown");
    assert!(eventually(LIMIT, || served_by(&caller, &["two"])).await);

    // A sidecar that dies leaves its session to expire: the znode stays until then.
    drop(two);
    assert!(
        znode(&client, "two").await.is_some(),
        "not deleted by the death itself"
    );
    assert!(
        eventually(LIMIT, || async { znode(&client, "two").await.is_none() }).await,
        "gone when the session expired"
    );
    assert!(
        eventually(LIMIT, || async {
            endpoints(&caller).await.contains("\"endpoints\": []")
        })
        .await,
        "the caller follows: {}",
        endpoints(&caller).await
    );
}

#[tokio::test]
async fn an_outage_serves_the_last_set_stale_and_a_restart_re_registers_and_re_lists() {
    let mut zk = ZooKeeper::start().await;
    let (app, _) = recording("one").await;
    let _one = sidecar(&registered_yaml(&zk, app, "one")).await;
    let caller = caller(&zk).await;
    assert!(eventually(LIMIT, || served_by(&caller, &["one"])).await);
    let first_owner = znode(&zk.client().await, "one")
        .await
        .unwrap()
        .0
        .ephemeral_owner;

    zk.kill();
    let admin = caller.addrs().admin.unwrap();
    let stale = "remora_discovery_stale{service=\"inventory\"}";
    assert!(
        eventually(LIMIT, || async { metric(admin, stale).await == 1.0 }).await,
        "the outage shows as staleness"
    );
    let shown = endpoints(&caller).await;
    assert!(shown.contains("\"stale\": true"), "{shown}");
    assert!(
        shown.contains("registry zookeeper: watch /services/inventory"),
        "the error names the registry and the znode: {shown}"
    );
    assert!(
        served_by(&caller, &["one"]).await,
        "the last known set serves"
    );
    // Down longer than the registration's 2 s session: it expires on the client's side.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        served_by(&caller, &["one"]).await,
        "still serving during the outage"
    );

    zk.spawn().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            metric(admin, stale).await == 0.0
        })
        .await,
        "fresh again once ZooKeeper is back"
    );
    let client = zk.client().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            znode(&client, "one")
                .await
                .is_some_and(|(stat, _)| stat.ephemeral_owner != first_owner)
        })
        .await,
        "registered again in a new session"
    );
    let (two, _) = recording("two").await;
    put_curator(&client, "two", two).await;
    assert!(
        eventually(LIMIT, || served_by(&caller, &["one", "two"])).await,
        "the watch follows changes made after the restart"
    );
}
