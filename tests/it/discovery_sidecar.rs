//! Discovery and self-registration end to end: sidecars configured in YAML, a real etcd,
//! traffic that follows instances as they register, deregister, expire, and as etcd
//! goes away and comes back.

use std::time::Duration;

use crate::support::etcd_harness;
use crate::support::*;

/// A sidecar in front of a recording app named `name`, registering itself in etcd with
/// a 2s TTL.
async fn registered_instance(etcd: &str, name: &'static str) -> (remora::Sidecar, Log) {
    registered_as(etcd, name, "127.0.0.1").await
}

/// The same, registering its inbound address as `host` (an IP or a name) writes it.
async fn registered_as(etcd: &str, name: &'static str, host: &str) -> (remora::Sidecar, Log) {
    let (app, log) = recording(name).await;
    let inbound = free_port();
    let sidecar = sidecar(&format!(
        "service: inventory\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         inbound: {{ listen: 127.0.0.1:{inbound}, app: {app} }}\n\
         registries:\n  main: {{ etcd: {{ endpoints: [{etcd}] }} }}\n\
         register: {{ registry: main, address: {host}:{inbound}, id: {name}, ttl: 2s, deregister_delay: 100ms }}\n"
    ))
    .await;
    (sidecar, log)
}

/// A caller's sidecar discovering `inventory` in etcd.
async fn caller(etcd: &str) -> remora::Sidecar {
    sidecar(&format!(
        "service: frontend\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         registries:\n  main: {{ etcd: {{ endpoints: [{etcd}] }} }}\n\
         services:\n  inventory:\n    listen: 127.0.0.1:0\n    discovery: {{ registry: main }}\n    balancer: {{ algorithm: round_robin }}\n"
    ))
    .await
}

async fn answered_by(caller: &remora::Sidecar) -> Option<String> {
    let url = format!(
        "http://{}/stock",
        caller.addrs().service("inventory").unwrap()
    );
    let (status, headers, _) = get(&url).await;
    (status == 200).then(|| headers["x-upstream"].to_str().unwrap().to_string())
}

/// docker-compose's way: the sidecar registers its container's name, which the system
/// resolver turns into the address callers reach (here `localhost` → 127.0.0.1).
#[tokio::test]
async fn a_registered_name_is_resolved_to_the_address_callers_reach() {
    let etcd = etcd_harness::Etcd::start().await;
    let endpoint = etcd.endpoint();
    let (_named, log) = registered_as(&endpoint, "named", "localhost").await;
    let caller = caller(&endpoint).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            answered_by(&caller).await.as_deref() == Some("named")
        })
        .await,
        "the instance registered by name gets traffic"
    );
    assert!(log.len() > 0, "the app saw the calls");
    let admin = caller.addrs().admin.unwrap();
    let (_, _, body) = get(&format!("http://{admin}/endpoints")).await;
    assert!(
        body.contains("127.0.0.1:"),
        "the registry holds the resolved address, not the name: {body}"
    );
    assert!(!body.contains("localhost"), "{body}");
}

#[tokio::test]
async fn instances_join_leave_and_expire_with_traffic_following() {
    let etcd = etcd_harness::Etcd::start().await;
    let endpoint = etcd.endpoint();
    let (one, one_log) = registered_instance(&endpoint, "one").await;
    let caller = caller(&endpoint).await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            answered_by(&caller).await.as_deref() == Some("one")
        })
        .await,
        "a registered instance gets traffic within a second or two"
    );

    let (two, two_log) = registered_instance(&endpoint, "two").await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            answered_by(&caller).await.as_deref() == Some("two")
        })
        .await,
        "a second instance joins the rotation"
    );

    // A graceful shutdown deregisters at once.
    one.shutdown().await;
    let before = one_log.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        assert_eq!(answered_by(&caller).await.as_deref(), Some("two"));
    }
    assert_eq!(one_log.len(), before, "no traffic after deregistration");

    // A sidecar that dies (no deregistration) disappears when its lease expires.
    drop(two);
    let admin = caller.addrs().admin.unwrap();
    assert!(
        eventually(Duration::from_secs(6), || async {
            get(&format!("http://{admin}/endpoints"))
                .await
                .2
                .contains("\"endpoints\": []")
        })
        .await,
        "the dead instance expired with its lease"
    );
    assert!(two_log.len() > 0);
    let url = format!("http://{}/", caller.addrs().service("inventory").unwrap());
    let (status, headers, _) = get(&url).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-remora-error"], "no-healthy-endpoint");
}

#[tokio::test]
async fn an_etcd_outage_keeps_the_last_instances_serving() {
    let mut etcd = etcd_harness::Etcd::start().await;
    let endpoint = etcd.endpoint();
    let (_one, _log) = registered_instance(&endpoint, "one").await;
    let caller = caller(&endpoint).await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            answered_by(&caller).await.is_some()
        })
        .await
    );
    etcd.kill();
    let admin = caller.addrs().admin.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&format!("http://{admin}/endpoints"))
                .await
                .2
                .contains("\"stale\": true")
        })
        .await,
        "the outage shows as staleness"
    );
    for _ in 0..10 {
        assert_eq!(
            answered_by(&caller).await.as_deref(),
            Some("one"),
            "the last known set serves"
        );
    }
    assert_eq!(
        metric(admin, "remora_discovery_stale{service=\"inventory\"}").await,
        1.0
    );
    etcd.restart().await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            metric(admin, "remora_discovery_stale{service=\"inventory\"}").await == 0.0
        })
        .await,
        "the watch resumes when etcd returns"
    );
    assert_eq!(answered_by(&caller).await.as_deref(), Some("one"));
}

/// Drain under load, in its order: a shutdown leaves the registry at once, keeps taking
/// new connections for `deregister_delay` (callers that have not yet seen the departure
/// still get answers), only then stops accepting, and every call in flight completes.
#[tokio::test]
async fn shutdown_deregisters_serves_through_the_delay_then_drains_every_call_in_flight() {
    let etcd = etcd_harness::Etcd::start().await;
    let endpoint = etcd.endpoint();
    // Slower than the delay: the calls begun before the shutdown are still in flight
    // when the listener stops.
    let app = serve(|_request: http::Request<hyper::body::Incoming>| async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        http::Response::new(full("done"))
    })
    .await;
    let inbound = free_port();
    let instance = sidecar(&format!(
        "service: inventory\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         drain_timeout: 10s\n\
         inbound: {{ listen: 127.0.0.1:{inbound}, app: {app} }}\n\
         registries:\n  main: {{ etcd: {{ endpoints: [{endpoint}] }} }}\n\
         register: {{ registry: main, address: 127.0.0.1:{inbound}, id: slow-1, ttl: 5s, deregister_delay: 3s }}\n"
    ))
    .await;
    let caller = caller(&endpoint).await;
    let endpoints = format!("http://{}/endpoints", caller.addrs().admin.unwrap());
    let registered = format!("127.0.0.1:{inbound}");
    assert!(
        eventually(Duration::from_secs(3), || async {
            get(&endpoints).await.2.contains(&registered)
        })
        .await,
        "the instance registers"
    );

    // Load: 40 calls in flight on their own connections when the shutdown begins.
    let url = format!("http://127.0.0.1:{inbound}/");
    let in_flight: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shutdown = tokio::spawn(instance.shutdown());

    assert!(
        eventually(Duration::from_secs(2), || async {
            !get(&endpoints).await.2.contains(&registered)
        })
        .await,
        "the registry forgets the instance at once, before its delay ends"
    );
    let during_delay = {
        let url = url.clone();
        tokio::spawn(async move { get(&url).await })
    };
    tokio::time::timeout(Duration::from_secs(15), shutdown)
        .await
        .expect("the drain ends within drain_timeout")
        .unwrap();
    let during_delay = during_delay.await.unwrap();
    assert_eq!(
        (during_delay.0.as_u16(), during_delay.2.as_str()),
        (200, "done"),
        "a new connection during deregister_delay is still served"
    );
    for call in in_flight {
        let (status, _, body) = call.await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "done"));
    }
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", inbound))
            .await
            .is_err(),
        "after the drain the listener is closed"
    );
}
