//! The file registry on a real file: edits become snapshots, a broken file is an outage
//! that keeps the last snapshot, and fixing it resumes.

use std::time::Duration;

use futures_util::StreamExt;
use remora::discovery::{FileConfig, FileRegistry, Instance, Registry, Snapshots};

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
