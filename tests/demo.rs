//! `remora demo`: the example services, their sidecars and the load generator run in one
//! process, traffic reaches both services through the sidecars, the scenes make the
//! frontend's resilience policies act, and the demo stops cleanly.

use std::process::Command;
use std::time::Duration;

use remora::demo::scenes::{tour, TourPlan};
use remora::demo::{run_with, DemoOptions, DemoReport, SceneReport, Screen, StopReason};

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

/// The tour in about five seconds: each scene long enough for a few hundred calls.
fn compressed_tour() -> TourPlan {
    TourPlan {
        steady: Duration::from_millis(500),
        flaky: Duration::from_millis(1500),
        outage: Duration::from_millis(1500),
        recovery: Duration::from_millis(1000),
        burst: Duration::from_millis(1000),
        burst_rate: 200,
    }
}

fn only_scene<'a>(report: &'a DemoReport, title: &str) -> &'a SceneReport {
    let scenes = report.scenes_titled(title);
    assert_eq!(
        scenes.len(),
        1,
        "one {title:?} scene in {:#?}",
        report.scenes
    );
    scenes[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenes_show_retries_the_breaker_and_fallbacks() {
    let plan = compressed_tour();
    let options = DemoOptions {
        duration: Some(Duration::from_millis(5500)),
        refresh: Duration::from_millis(500),
        screen: Screen::Append,
        scenes: tour(&plan),
        ..DemoOptions::default()
    };
    let mut out = Vec::new();
    let report = run_with(options, &mut out).await.expect("the demo starts");
    let printed = String::from_utf8_lossy(&out);
    let context = format!("{printed}\n{report:#?}");
    assert!(report.stopped_cleanly, "{context}");
    assert!(
        report.scenes.len() >= 4,
        "the run reaches the recovery: {context}"
    );

    // One instance failing half its calls: retries absorb it, callers see successes.
    let flaky = only_scene(&report, "fail 50%");
    for name in ["catalog", "inventory"] {
        let service = flaky.service(name).expect("figures per service");
        assert!(service.policy.retries > 0, "{name} retried: {context}");
        assert!(
            service.calls.successes() * 10 >= service.calls.requests() * 9,
            "{name}: retries kept calls succeeding: {context}"
        );
    }
    let inventory = report.service("inventory").expect("reported");
    assert!(inventory.policy.retries > 0, "{context}");

    // Every catalog instance failing: the breaker opens, the fallback answers 200.
    let outage = only_scene(&report, "every catalog instance fails");
    let catalog = outage.service("catalog").expect("figures per service");
    assert!(catalog.policy.breaker_opened >= 1, "{context}");
    assert!(catalog.policy.fallbacks > 0, "{context}");
    let calls = &catalog.calls;
    assert!(calls.requests() > 0, "{context}");
    assert!(
        calls.statuses.get("2xx").copied().unwrap_or(0) * 10 >= calls.requests() * 9,
        "callers still got 200s: {context}"
    );
    assert!(
        calls.degraded * 2 >= calls.requests(),
        "most answers were degraded ones: {context}"
    );
    assert!(
        report
            .service("catalog")
            .expect("reported")
            .policy
            .breaker_opened
            >= 1,
        "{context}"
    );

    for expected in ["scene 1/5: steady", "scene 3/5: every catalog", "breaker"] {
        assert!(printed.contains(expected), "no {expected:?} in:\n{printed}");
    }
    assert!(
        printed.contains("open"),
        "the table shows the breaker open:\n{printed}"
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
