//! The `remora` command line: `validate` exit codes and messages, `--help`.

use std::process::Command;

fn remora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn validate_accepts_the_shipped_configs() {
    for file in ["config/reference.yaml", "config/minimal.yaml"] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let out = remora(&["validate", &path]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).ends_with("ok\n"));
    }
}

#[test]
fn validate_rejects_a_typo_with_its_location_and_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "services:\n  orders:\n    listen: 127.0.0.1:9001\n    endpionts: [10.0.0.1:80]\n",
    )
    .unwrap();
    let out = remora(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml:4:5: services.orders.endpionts"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `endpoints`"), "{stderr}");
}

#[test]
fn validate_reports_a_missing_file() {
    let out = remora(&["validate", "/nonexistent/remora.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/remora.yaml"));
}

#[test]
fn run_refuses_a_broken_config_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "drain_timeout: 5 parsecs\n").unwrap();
    let out = remora(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml:1:"));
}

#[test]
fn help_names_every_command() {
    let out = remora(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "validate", "demo"] {
        assert!(help.contains(command), "{help}");
    }
}

fn remora_with_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// `run` and `validate` take the config the same ways: `-c`, `--config`, a bare file,
/// or `REMORA_CONFIG`; without any, a usage error that says how.
#[test]
fn run_and_validate_take_the_config_the_same_ways() {
    let minimal = format!("{}/config/minimal.yaml", env!("CARGO_MANIFEST_DIR"));
    for args in [
        vec!["validate", "-c", &minimal],
        vec!["validate", "--config", &minimal],
        vec!["validate", &minimal],
    ] {
        let out = remora(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = remora_with_env(&["validate"], &[("REMORA_CONFIG", &minimal)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for command in ["run", "validate"] {
        let out = remora_with_env(&[command], &[]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("-c FILE") && stderr.contains("REMORA_CONFIG"),
            "{stderr}"
        );
    }
}

/// `--log-level` replaces the config's level; a filter that does not parse is refused
/// before anything starts.
#[test]
fn run_takes_a_log_level_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.yaml");
    std::fs::write(
        &path,
        "admin: { listen: 127.0.0.1:0 }\nservices:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [127.0.0.1:9]\nlog: { level: error }\n",
    )
    .unwrap();
    let out = remora_with_env(
        &[
            "run",
            "-c",
            path.to_str().unwrap(),
            "--log-level",
            "remora=[nope",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-level"));

    // At debug, the start is logged; the config's `error` level would hide it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["run", "-c", path.to_str().unwrap(), "--log-level", "debug"])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DEBUG") || stderr.contains("INFO"),
        "{stderr}"
    );
}

/// `remora live` asks the admin address the config names: 0 while the sidecar runs,
/// 1 once it is gone (the Docker health check).
#[test]
fn live_asks_the_admin_listener_the_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.yaml");
    let admin = crate::support::free_port();
    std::fs::write(
        &path,
        format!(
            "admin: {{ listen: 0.0.0.0:{admin} }}\nservices:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [127.0.0.1:9]\n"
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["run", "-c", path])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut live = remora(&["live", "-c", path]);
    while !live.status.success() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        live = remora(&["live", "-c", path]);
    }
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let _ = child.kill();
    let _ = child.wait();
    let dead = remora(&["live", "-c", path]);
    assert_eq!(dead.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dead.stderr).contains(&format!("127.0.0.1:{admin}/live")));
}

/// The process's heap is not backed by transparent huge pages: mimalloc, the global
/// allocator, is built without asking the kernel for them (its `no_thp` feature). Asked
/// for, each arena it touches makes a whole 2 MiB page resident on a kernel in THP
/// `madvise` mode (Debian's default): idle private memory went from 3 MB to 9 MB. Under
/// `always` the kernel decides for every process alike, so the check holds where the
/// process's own choice counts (`madvise`, `never`).
#[tokio::test]
async fn the_heap_is_not_backed_by_transparent_huge_pages() {
    use crate::support::{http1_client, sidecar_process};
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    // Nothing listens on the discard port: every call is answered 502.
    let nowhere = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let (process, _admin, port, _dir) = sidecar_process(nowhere, "http1", "5s").await;
    // Some work first.
    for _ in 0..20 {
        let request = http::Request::get(format!("http://127.0.0.1:{port}/"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = http1_client().request(request).await.unwrap();
        assert!(response.status().is_server_error());
    }
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", process.id())).unwrap();
    let huge_kib: u64 = rollup
        .lines()
        .find_map(|line| line.strip_prefix("AnonHugePages:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("smaps_rollup has AnonHugePages");
    if mode.contains("[always]") {
        eprintln!("THP mode `always`: {huge_kib} KiB of huge pages, the kernel's choice");
    } else {
        assert_eq!(
            huge_kib, 0,
            "anonymous memory in transparent huge pages ({mode})"
        );
    }
}
