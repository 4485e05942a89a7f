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
