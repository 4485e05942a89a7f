//! Hot reload of the real binary: a changed file applies to new requests, SIGHUP reloads,
//! and a broken file is refused with its location while the old config keeps serving.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;

fn config(admin: u16, port: u16, endpoint: SocketAddr) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:{admin} }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:{port}\n    endpoints: [{endpoint}]\n"
    )
}

async fn served_by(port: u16) -> String {
    let (_, headers, _) = get(&format!("http://127.0.0.1:{port}/")).await;
    headers
        .get("x-upstream")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Reloads with `result` so far. The series appears with the first reload of that result,
/// so absent is zero here; each test also waits for it to reach 1, which proves the
/// spelling.
async fn reloads(admin: u16, result: &str) -> f64 {
    let series = format!("remora_config_reloads_total{{result=\"{result}\"}}");
    metric_or_zero(SocketAddr::from(([127, 0, 0, 1], admin)), &series).await
}

#[tokio::test]
async fn file_changes_apply_and_broken_files_are_refused() {
    let (a, _) = recording("a").await;
    let (b, _) = recording("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.yaml");
    let (admin, port) = (free_port(), free_port());
    std::fs::write(&path, config(admin, port, a)).unwrap();
    let process = Process::run(&path, SocketAddr::from(([127, 0, 0, 1], admin))).await;
    assert_eq!(served_by(port).await, "a");

    std::fs::write(&path, config(admin, port, b)).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            served_by(port).await == "b"
        })
        .await,
        "the edited endpoint was not applied: {}",
        process.log()
    );

    // A typo: refused, located, and the previous config keeps serving.
    std::fs::write(
        &path,
        config(admin, port, a).replace("endpoints:", "endpoint:"),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            reloads(admin, "failed").await == 1.0
        })
        .await,
        "the broken config was not noticed: {}",
        process.log()
    );
    let log = process.log();
    assert!(log.contains("config reload refused"), "{log}");
    assert!(
        log.contains("remora.yaml:5:"),
        "the error names file and line: {log}"
    );
    for _ in 0..5 {
        assert_eq!(served_by(port).await, "b");
    }
}

#[tokio::test]
async fn sighup_reloads_the_file() {
    let (a, _) = recording("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.yaml");
    let (admin, port) = (free_port(), free_port());
    std::fs::write(&path, config(admin, port, a)).unwrap();
    let process = Process::run(&path, SocketAddr::from(([127, 0, 0, 1], admin))).await;
    assert_eq!(reloads(admin, "ok").await, 0.0);
    process.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            reloads(admin, "ok").await == 1.0
        })
        .await,
        "SIGHUP did not reload: {}",
        process.log()
    );
    assert_eq!(served_by(port).await, "a");
}
