//! The file registry on a real file: edits become snapshots, a broken file is an outage
//! that keeps the last snapshot, and fixing it resumes; through a sidecar, its watch
//! survives a config reload that keeps the service's discovery.

use std::time::Duration;

use futures_util::StreamExt;
use remora::discovery::{FileConfig, FileRegistry, Instance, Registry, Snapshots};

use crate::support;

async fn next(watch: &mut Snapshots) -> Result<Vec<Instance>, String> {
    tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("an item within 5s")
        .expect("the stream goes on")
        .map_err(|e| e.to_string())
}

fn ports(snapshot: &[Instance]) -> Vec<u16> {
    snapshot.iter().map(|i| i.addr.port()).collect()
}

/// Replaces the file the way editors and config managers do: write aside, then rename.
fn replace(path: &std::path::Path, text: &str) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

#[tokio::test]
async fn yaml_edits_become_snapshots_and_a_broken_file_keeps_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("services.yaml");
    std::fs::write(&path, "orders:\n  - 127.0.0.1:1\n").unwrap();
    let registry = FileRegistry::new(FileConfig::new(&path)).unwrap();
    let mut watch = registry.watch("orders");
    assert_eq!(ports(&next(&mut watch).await.unwrap()), [1]);

    // An in-place write.
    std::fs::write(
        &path,
        "orders:\n  - 127.0.0.1:1\n  - { id: two, address: 127.0.0.1, port: 2, weight: 3 }\n",
    )
    .unwrap();
    let snapshot = next(&mut watch).await.unwrap();
    assert_eq!(ports(&snapshot), [1, 2]);
    assert_eq!(snapshot[1].weight, 3);

    replace(&path, "orders: [127.0.0.1:1, {address: 127.0.0.1, port: 2}");
    let error = next(&mut watch).await.unwrap_err();
    assert!(error.contains("services.yaml"), "{error}");

    replace(&path, "orders:\n  - 127.0.0.1:3\n");
    assert_eq!(ports(&next(&mut watch).await.unwrap()), [3]);
}

#[tokio::test]
async fn json_files_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("services.json");
    let registry = FileRegistry::new(FileConfig::new(&path)).unwrap();
    let mut watch = registry.watch("orders");
    // No file yet: an outage, not an empty snapshot.
    assert!(next(&mut watch).await.is_err());
    replace(
        &path,
        r#"{"orders": ["127.0.0.1:5"], "billing": ["127.0.0.1:6"]}"#,
    );
    assert_eq!(ports(&next(&mut watch).await.unwrap()), [5]);
    // A change to another service only: no new snapshot for this one.
    replace(
        &path,
        r#"{"orders": ["127.0.0.1:5"], "billing": ["127.0.0.1:7"]}"#,
    );
    let quiet = tokio::time::timeout(Duration::from_millis(600), watch.next()).await;
    assert!(quiet.is_err(), "unchanged snapshots are not repeated");
}

/// Which upstream (its `x-upstream`) answered a GET to `port`.
async fn answered_by(port: std::net::SocketAddr) -> String {
    let (status, headers, _) = support::get(&format!("http://{port}/")).await;
    assert_eq!(status, 200);
    headers["x-upstream"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn a_file_watch_survives_a_reload_that_keeps_the_service() {
    let (a, _) = support::recording("a").await;
    let (b, _) = support::recording("b").await;
    let (c, _) = support::recording("c").await;
    let dir = tempfile::tempdir().unwrap();
    let instances = dir.path().join("instances.yaml");
    std::fs::write(&instances, format!("svc: [{a}]\n")).unwrap();
    // `extra` is what the reload changes; svc's discovery stays as it is.
    let config = |extra: &str| {
        remora::build::parse(
            "test.yaml",
            &format!(
                "admin: {{ listen: 127.0.0.1:0 }}\n\
                 registries:\n  files: {{ file: {{ path: {} }} }}\n\
                 services:\n  svc:\n    listen: 127.0.0.1:0\n    discovery: {{ registry: files }}\n{extra}",
                instances.display()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let proxy = remora::Sidecar::start(config("")).await.unwrap();
    let svc = proxy.addrs().service("svc").unwrap();
    let admin = proxy.addrs().admin.unwrap();
    assert_eq!(answered_by(svc).await, "a");
    let updates = r#"remora_discovery_updates_total{service="svc",result="ok"}"#;
    let before = support::metric(admin, updates).await;

    // A reload that changes the service's timeout, not its discovery. A new watch would
    // apply its first snapshot before the reload returns: the count shows there was none.
    proxy
        .handle()
        .reload(config("    timeout: 5s\n"))
        .await
        .unwrap();
    assert_eq!(
        proxy.handle().config().services["svc"].timeout,
        config("    timeout: 5s\n").services["svc"].timeout,
        "the reload applied"
    );
    assert_eq!(
        support::metric(admin, updates).await,
        before,
        "the same watch"
    );

    replace(&instances, &format!("svc: [{b}]\n"));
    assert!(
        support::eventually(Duration::from_secs(5), || async {
            answered_by(svc).await == "b"
        })
        .await,
        "an edit of the registry file after the reload never reached traffic"
    );
    assert_eq!(support::metric(admin, updates).await, before + 1.0);

    // A reload that changes the discovery (another balancer) does start a new watch,
    // which reads the file afresh: the count moves, and edits still reach traffic.
    let round_robin = "    timeout: 5s\n    balancer: { algorithm: round_robin }\n";
    proxy.handle().reload(config(round_robin)).await.unwrap();
    assert_eq!(support::metric(admin, updates).await, before + 2.0);
    replace(&instances, &format!("svc: [{c}]\n"));
    assert!(
        support::eventually(Duration::from_secs(5), || async {
            answered_by(svc).await == "c"
        })
        .await,
        "an edit after the second reload never reached traffic"
    );
}
