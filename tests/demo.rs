//! `remora demo`: the example services, their sidecars and the load generator run in one
//! process, traffic reaches both services through the sidecars, and the demo stops cleanly.

use std::process::Command;
use std::time::Duration;

use remora::demo::{run_with, DemoOptions, Screen, StopReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_flows_to_both_services_and_the_demo_stops_cleanly() {
    let options = DemoOptions {
        duration: Some(Duration::from_secs(3)),
        screen: Screen::Append,
        ..DemoOptions::default()
    };
    let mut out = Vec::new();
    let report = run_with(options, &mut out).await.expect("the demo starts");

    assert_eq!(report.stop_reason, StopReason::Duration);
    assert!(report.stopped_cleanly, "every part stopped in time");
    for name in ["catalog", "inventory"] {
        let service = report.service(name).expect("the service is reported");
        let total = &service.total;
        assert!(
            total.requests() >= 100,
            "{name}: {} calls in 3s",
            total.requests()
        );
        assert!(
            total.successes() * 10 >= total.requests() * 9,
            "{name}: mostly successes, got {:?}",
            total.statuses
        );
        assert_eq!(
            total.instances.len(),
            2,
            "{name}: both instances answered: {:?}",
            total.instances
        );
    }
    let printed = String::from_utf8(out).expect("the output is text");
    assert!(printed.contains("summary over"), "{printed}");
    assert!(
        !printed.contains('\x1b'),
        "plain output has no escape codes"
    );
}

#[test]
fn the_binary_prints_tables_and_exits_zero() {
    let output = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["demo", "--duration", "2s"])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    for expected in [
        "service",
        "req/s",
        "p50",
        "p99",
        "catalog",
        "inventory",
        "/metrics",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains("-- 1s --"),
        "a table every second:\n{stdout}"
    );
}
