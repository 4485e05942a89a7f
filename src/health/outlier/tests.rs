//! Outlier ejection with paused time: counts, durations, the cap and decay.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use prometheus_client::registry::Registry as MetricsRegistry;

use super::*;
use crate::discovery::Instance;

const BASE: Duration = Duration::from_secs(10);
const MILLI: Duration = Duration::from_millis(1);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct Harness {
    set: Arc<EndpointSet>,
    detector: OutlierDetector,
    registry: MetricsRegistry,
}

impl Harness {
    /// Ejection after 3 failures, for 10 s growing to 25 s, at most 50% of `ports`.
    fn new(ports: &[u16]) -> Self {
        let config = OutlierConfig::try_new(
            3,
            OutlierConfig::default_failure_on(),
            BASE,
            Duration::from_secs(25),
            50,
        )
        .unwrap();
        Self::with_config(ports, config)
    }

    fn with_config(ports: &[u16], config: OutlierConfig) -> Self {
        let set = Arc::new(EndpointSet::new());
        let instances: Vec<Instance> = ports.iter().map(|&p| Instance::new(addr(p))).collect();
        set.update(&instances);
        let mut registry = MetricsRegistry::with_prefix("remora");
        let metrics = HealthMetrics::register(&mut registry);
        let detector = OutlierDetector::new("users".into(), config, set.clone(), metrics);
        Self {
            set,
            detector,
            registry,
        }
    }

    fn endpoint(&self, port: u16) -> Arc<Endpoint> {
        self.set
            .snapshot()
            .iter()
            .find(|e| e.addr.port() == port)
            .cloned()
            .unwrap()
    }

    fn answer(&self, port: u16, status: u16) {
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        self.detector
            .observe(&self.endpoint(port), &Ok(response), Duration::ZERO);
    }

    fn refused(&self, port: u16) {
        let result = Err(ProxyError::Connect {
            endpoint: addr(port).to_string(),
            source: "refused".into(),
            unsent: None,
        });
        self.detector
            .observe(&self.endpoint(port), &result, Duration::ZERO);
    }

    fn fail(&self, port: u16, times: usize) {
        for _ in 0..times {
            self.answer(port, 503);
        }
    }

    fn ejected(&self, port: u16) -> bool {
        self.endpoint(port)
            .readiness
            .ejected
            .load(Ordering::Relaxed)
    }

    fn ejected_count(&self) -> usize {
        self.set
            .snapshot()
            .iter()
            .filter(|e| e.readiness.ejected.load(Ordering::Relaxed))
            .count()
    }

    fn view(&self, port: u16) -> Option<EjectionView> {
        self.detector
            .snapshot()
            .into_iter()
            .find(|view| view.endpoint == addr(port))
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }
}

/// Lets time pass and the woken timer tasks run.
async fn advance(by: Duration) {
    tokio::time::advance(by).await;
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn ejects_after_exactly_n_failures_in_a_row() {
    let h = Harness::new(&[1, 2, 3, 4]);
    h.fail(1, 2);
    assert!(!h.ejected(1));
    assert_eq!(h.view(1).unwrap().consecutive_failures, 2);
    h.refused(1);
    assert!(h.ejected(1), "the third failure ejects");
    assert!(!h.ejected(2));
    let view = h.view(1).unwrap();
    assert_eq!(view.times_ejected, 1);
    assert_eq!(view.ejected_for, Some(BASE));
    let metrics = h.metrics();
    assert!(metrics.contains(r#"remora_outlier_ejections_total{service="users"} 1"#));
    assert!(metrics.contains(r#"remora_outlier_ejected{service="users"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn only_configured_failures_count() {
    let h = Harness::new(&[1, 2, 3, 4]);
    // 404 and 429 are answers, not failures: they reset the count like a 200.
    h.fail(1, 2);
    h.answer(1, 404);
    h.fail(1, 2);
    h.answer(1, 429);
    h.answer(1, 500);
    h.answer(1, 502);
    assert!(!h.ejected(1));
    h.answer(1, 504);
    assert!(h.ejected(1));
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_count() {
    let h = Harness::new(&[1, 2, 3, 4]);
    h.fail(1, 2);
    h.answer(1, 200);
    assert!(h.view(1).is_none(), "nothing left to remember");
    h.fail(1, 2);
    assert!(!h.ejected(1));
    h.fail(1, 1);
    assert!(h.ejected(1));
}

#[tokio::test(start_paused = true)]
async fn returns_after_the_base_ejection() {
    let h = Harness::new(&[1, 2, 3, 4]);
    h.fail(1, 3);
    assert!(h.ejected(1));
    // Failures of calls already in flight neither count nor extend the ejection.
    h.fail(1, 5);
    advance(BASE - MILLI).await;
    assert!(h.ejected(1));
    advance(MILLI).await;
    assert!(!h.ejected(1), "back when the ejection ends");
    let view = h.view(1).unwrap();
    assert_eq!(view.consecutive_failures, 0);
    assert_eq!(view.ejected_for, None);
    assert!(h
        .metrics()
        .contains(r#"remora_outlier_ejected{service="users"} 0"#));
}

#[tokio::test(start_paused = true)]
async fn each_ejection_lasts_longer_up_to_the_maximum() {
    let h = Harness::new(&[1, 2, 3, 4]);
    h.fail(1, 3);
    advance(BASE).await;
    assert!(!h.ejected(1));

    // Second ejection: twice the base.
    h.fail(1, 3);
    assert!(h.ejected(1));
    assert_eq!(h.view(1).unwrap().times_ejected, 2);
    advance(2 * BASE - MILLI).await;
    assert!(h.ejected(1));
    advance(MILLI).await;
    assert!(!h.ejected(1));

    // Third: three times the base would be 30 s; the maximum is 25 s.
    h.fail(1, 3);
    assert_eq!(
        h.view(1).unwrap().ejected_for,
        Some(Duration::from_secs(25))
    );
    advance(Duration::from_secs(25) - MILLI).await;
    assert!(h.ejected(1));
    advance(MILLI).await;
    assert!(!h.ejected(1));
    assert!(h
        .metrics()
        .contains(r#"remora_outlier_ejections_total{service="users"} 3"#));
}

#[tokio::test(start_paused = true)]
async fn times_ejected_decays_in_rotation() {
    let h = Harness::new(&[1, 2, 3, 4]);
    h.fail(1, 3);
    advance(BASE).await;
    h.fail(1, 3);
    advance(2 * BASE).await;
    assert!(!h.ejected(1));
    assert_eq!(h.view(1).unwrap().times_ejected, 2);

    // One base period back in rotation takes one ejection off the record.
    advance(BASE).await;
    assert_eq!(h.view(1).unwrap().times_ejected, 1);
    h.fail(1, 3);
    assert_eq!(h.view(1).unwrap().ejected_for, Some(2 * BASE));
    advance(2 * BASE).await;

    // Long enough, and the record is clean: the next ejection is a first one again,
    // and a success forgets the endpoint.
    advance(5 * BASE).await;
    assert_eq!(h.view(1).unwrap().times_ejected, 0);
    h.answer(1, 200);
    assert!(h.view(1).is_none());
    h.fail(1, 3);
    assert_eq!(h.view(1).unwrap().ejected_for, Some(BASE));
}

#[tokio::test(start_paused = true)]
async fn never_ejects_beyond_max_ejection_percent() {
    let h = Harness::new(&[1, 2, 3, 4]);
    for port in 1..=4 {
        h.fail(port, 3);
    }
    assert_eq!(h.ejected_count(), 2, "50% of 4");
    assert!(h.ejected(1) && h.ejected(2));
    assert!(h
        .metrics()
        .contains(r#"remora_outlier_ejections_capped_total{service="users"} 2"#));
    // The refused ones keep their count: the next failure after room is made ejects.
    assert_eq!(h.view(3).unwrap().consecutive_failures, 3);
    advance(BASE).await;
    assert_eq!(h.ejected_count(), 0);
    h.fail(3, 1);
    h.fail(4, 1);
    assert!(h.ejected(3) && h.ejected(4));
    assert_eq!(h.ejected_count(), 2);
    h.fail(1, 3);
    assert!(!h.ejected(1), "the cap holds again");
}

#[tokio::test(start_paused = true)]
async fn a_single_endpoint_is_ejected_only_at_100_percent() {
    let h = Harness::new(&[1]);
    h.fail(1, 10);
    assert!(!h.ejected(1));
    let all =
        OutlierConfig::try_new(3, OutlierConfig::default_failure_on(), BASE, BASE, 100).unwrap();
    let h = Harness::with_config(&[1], all);
    h.fail(1, 3);
    assert!(h.ejected(1));
}

#[tokio::test(start_paused = true)]
async fn records_of_vanished_endpoints_go_and_their_flags_are_cleared() {
    let h = Harness::new(&[1, 2, 3, 4]);
    let old = h.endpoint(1);
    h.fail(1, 3);
    h.fail(2, 1);
    assert!(old.readiness.ejected.load(Ordering::Relaxed));

    h.set.update(&[2, 3, 4].map(|p| Instance::new(addr(p))));
    let views = h.detector.snapshot();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].endpoint, addr(2));
    assert!(h
        .metrics()
        .contains(r#"remora_outlier_ejected{service="users"} 0"#));

    // Back at the same address: a new endpoint with a clean record.
    h.set.update(&[1, 2, 3, 4].map(|p| Instance::new(addr(p))));
    assert!(!h.ejected(1));
    h.fail(1, 2);
    assert_eq!(h.view(1).unwrap().consecutive_failures, 2);
    advance(BASE).await;
    assert!(!old.readiness.ejected.load(Ordering::Relaxed));
    assert!(!h.ejected(1));
    assert_eq!(h.view(1).unwrap().consecutive_failures, 2);
}

#[tokio::test(start_paused = true)]
async fn an_ejection_outlives_its_detector_only_until_it_ends() {
    let h = Harness::new(&[1, 2, 3, 4]);
    h.fail(1, 3);
    let Harness { set, detector, .. } = h;
    drop(detector);
    let one = set.snapshot()[0].clone();
    assert!(one.readiness.ejected.load(Ordering::Relaxed));
    advance(BASE).await;
    assert!(!one.readiness.ejected.load(Ordering::Relaxed));
}

#[test]
fn rejects_configs_that_make_no_sense() {
    use OutlierConfigError::*;
    let s = Duration::from_secs;
    let on = OutlierConfig::default_failure_on;
    assert_eq!(
        OutlierConfig::try_new(0, on(), s(1), s(1), 50),
        Err(ZeroConsecutiveFailures)
    );
    assert_eq!(
        OutlierConfig::try_new(1, Conditions::default(), s(1), s(1), 50),
        Err(NoFailureConditions)
    );
    assert_eq!(
        OutlierConfig::try_new(1, on(), s(0), s(1), 50),
        Err(ZeroBaseEjection)
    );
    assert!(matches!(
        OutlierConfig::try_new(1, on(), s(2), s(1), 50),
        Err(MaxBelowBase { .. })
    ));
    assert!(matches!(
        OutlierConfig::try_new(1, on(), s(1), s(100_000), 50),
        Err(MaxTooLong(_))
    ));
    assert_eq!(
        OutlierConfig::try_new(1, on(), s(1), s(1), 0),
        Err(PercentOutOfRange(0))
    );
    assert_eq!(
        OutlierConfig::try_new(1, on(), s(1), s(1), 101),
        Err(PercentOutOfRange(101))
    );
    let default = OutlierConfig::default();
    assert_eq!(
        OutlierConfig::try_new(5, on(), s(30), s(300), 50),
        Ok(default)
    );
}
