//! `remora demo`: the example services, their sidecars and the load generator run in one
//! process, traffic reaches both services through the sidecars, the scenes make the
//! frontend's resilience policies act, instances join and leave `inventory`'s registry
//! with the traffic following, and the demo stops cleanly.

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
        // `inventory-3` runs from the start, but its registry lists it only later.
        assert_eq!(
            total.instances.len(),
            2,
            "{name}: both listed instances answered: {:?}",
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

/// The tour in about eight seconds: each scene long enough for a few hundred calls.
fn compressed_tour() -> TourPlan {
    TourPlan {
        steady: Duration::from_millis(500),
        flaky: Duration::from_millis(1500),
        outage: Duration::from_millis(1500),
        recovery: Duration::from_millis(1000),
        burst: Duration::from_millis(1000),
        burst_rate: 200,
        scale_up: Duration::from_millis(1000),
        scale_down: Duration::from_millis(1500),
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
async fn the_scenes_show_retries_the_breaker_fallbacks_and_scaling() {
    let plan = compressed_tour();
    let options = DemoOptions {
        // The scenes' 8 s, and time for the registry changes to reach the frontend.
        duration: Some(Duration::from_millis(8800)),
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

    // inventory-3 joins the registry: the frontend starts calling it.
    let scale_up = only_scene(&report, "inventory-3 joins");
    let inventory = scale_up.service("inventory").expect("figures per service");
    let by_3 = inventory.calls.instances.get("inventory-3").copied();
    assert!(by_3.unwrap_or(0) > 0, "inventory-3 answered: {context}");

    // inventory-1 leaves: the others take its calls, and nothing fails. A call the
    // frontend sent it just before the switch may still finish in the scene: at most
    // the load's four workers, under 2% of the scene's calls.
    let scale_down = only_scene(&report, "inventory-1 leaves");
    let calls = &scale_down
        .service("inventory")
        .expect("figures per service")
        .calls;
    assert!(calls.requests() >= 150, "a long enough scene: {context}");
    let by_1 = calls.instances.get("inventory-1").copied().unwrap_or(0);
    assert!(
        by_1 * 50 <= calls.requests(),
        "inventory-1 answered {by_1} of {} calls after leaving: {context}",
        calls.requests()
    );
    assert!(
        calls.successes() * 100 >= calls.requests() * 99,
        "no failed calls while inventory-1 left: {context}"
    );

    for expected in [
        "scene 1/7: steady",
        "scene 3/7: every catalog",
        "scene 6/7: inventory scales up",
        "scene 7/7: inventory scales down",
        "breaker",
    ] {
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
