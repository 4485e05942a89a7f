//! The service breaker driven through its service by a programmable upstream.

use std::time::Duration;

use http::{Request, Response};
use prometheus_client::registry::Registry as MetricsRegistry;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::core::outcome::Conditions;
use crate::policy::circuit_breaker::FailureRate;
use crate::policy::test_support::{self, proxied, Upstream};

const SECOND: Duration = Duration::from_secs(1);
const MILLI: Duration = Duration::from_millis(1);

struct Harness {
    upstream: Upstream,
    service: ServiceBreaker<Upstream>,
    handle: ServiceBreakerHandle,
    registry: MetricsRegistry,
}

impl Harness {
    fn new(config: BreakerConfig) -> Self {
        let mut registry = MetricsRegistry::with_prefix("remora");
        let metrics = BreakerMetrics::register(&mut registry);
        let layer = ServiceBreakerLayer::new("users".into(), config, metrics);
        let upstream = Upstream::ok();
        Self {
            service: layer.layer(upstream.clone()),
            handle: layer.handle(),
            upstream,
            registry,
        }
    }

    /// One whole call.
    async fn send(&self) -> Result<Response<ProxyBody>, ProxyError> {
        self.service.clone().oneshot(request()).await
    }

    /// Starts a call without polling it: admission happens here.
    fn start(&mut self) -> ResponseFuture<<Upstream as Service<Request<ProxyBody>>>::Future> {
        // The inner service is always ready.
        self.service.call(request())
    }

    /// Makes the upstream answer 503 (`true`) or 200 from now on.
    fn fail(&self, failing: bool) {
        let code = if failing { 503 } else { 200 };
        self.upstream
            .answer_with(move |_| test_support::status(code).into());
    }

    /// Makes the upstream fail with `error()` from now on.
    fn fail_with(&self, error: fn() -> ProxyError) {
        self.upstream.answer_with(move |_| Err(error()).into());
    }

    fn state(&self) -> BreakerState {
        self.handle.state()
    }

    fn opened_for(&self) -> Option<Duration> {
        self.handle.snapshot()[0].opened_for
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }
}

fn request() -> Request<ProxyBody> {
    proxied(Request::new(ProxyBody::empty()))
}

fn gateway() -> Conditions {
    Conditions {
        gateway_error: true,
        ..Default::default()
    }
}

fn consecutive(failures: u32, half_open: u32) -> BreakerConfig {
    BreakerConfig::try_new(
        Some(failures),
        None,
        SECOND,
        3 * SECOND,
        half_open,
        gateway(),
    )
    .unwrap()
}

fn by_rate(threshold: f64, min_requests: u32) -> BreakerConfig {
    let rate = FailureRate::try_new(threshold, min_requests, 10 * SECOND).unwrap();
    BreakerConfig::try_new(None, Some(rate), SECOND, 3 * SECOND, 1, gateway()).unwrap()
}

fn status(result: Result<Response<ProxyBody>, ProxyError>) -> u16 {
    result.unwrap().status().as_u16()
}

fn is_breaker_open(result: Result<Response<ProxyBody>, ProxyError>) -> bool {
    matches!(result, Err(ProxyError::BreakerOpen(service)) if service == "users")
}

#[tokio::test(start_paused = true)]
async fn opens_after_exactly_n_consecutive_failures() {
    let h = Harness::new(consecutive(3, 1));
    h.fail(true);
    for _ in 0..2 {
        assert_eq!(status(h.send().await), 503);
        assert_eq!(h.state(), BreakerState::Closed);
    }
    assert_eq!(status(h.send().await), 503);
    assert_eq!(h.state(), BreakerState::Open);
    assert_eq!(h.upstream.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_count() {
    let h = Harness::new(consecutive(3, 1));
    for failing in [true, true, false, true, true] {
        h.fail(failing);
        h.send().await.unwrap();
    }
    assert_eq!(h.state(), BreakerState::Closed);
    assert_eq!(h.handle.snapshot()[0].consecutive_failures, 2);
    h.send().await.unwrap();
    assert_eq!(h.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn open_fails_fast_without_calling_the_service() {
    let h = Harness::new(consecutive(1, 1));
    h.fail(true);
    h.send().await.unwrap();
    assert_eq!(h.state(), BreakerState::Open);
    for _ in 0..5 {
        assert!(is_breaker_open(h.send().await));
    }
    assert_eq!(h.upstream.calls(), 1);
    let metrics = h.metrics();
    assert!(metrics.contains(r#"remora_breaker_rejected_total{service="users"} 5"#));
    assert!(metrics.contains(r#"remora_breaker_state{service="users",endpoint=""} 1"#));
    assert!(metrics.contains(
        r#"remora_breaker_transitions_total{service="users",endpoint="",from="closed",to="open"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn failure_rate_needs_min_requests() {
    let h = Harness::new(by_rate(0.5, 4));
    h.fail(true);
    for _ in 0..3 {
        h.send().await.unwrap();
    }
    // Three of three failed, but three calls are too few to judge.
    assert_eq!(h.state(), BreakerState::Closed);
    assert_eq!(h.handle.snapshot()[0].failure_rate, Some(1.0));
    h.send().await.unwrap();
    assert_eq!(h.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_below_threshold_stays_closed() {
    let h = Harness::new(by_rate(0.5, 4));
    for failing in [true, false, false, false, true, false] {
        h.fail(failing);
        h.send().await.unwrap();
    }
    assert_eq!(h.state(), BreakerState::Closed);
    h.fail(true);
    // 3 of 7 failed: below half.
    h.send().await.unwrap();
    assert_eq!(h.state(), BreakerState::Closed);
    // 4 of 8: at the threshold.
    h.send().await.unwrap();
    assert_eq!(h.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_window_slides() {
    // Old failures age out: three now and one ten seconds later are not four.
    let h = Harness::new(by_rate(0.5, 4));
    h.fail(true);
    for _ in 0..3 {
        h.send().await.unwrap();
    }
    tokio::time::advance(10 * SECOND).await;
    h.send().await.unwrap();
    assert_eq!(h.state(), BreakerState::Closed);
    assert_eq!(h.handle.snapshot()[0].failure_rate, Some(1.0));

    // The same within the window trips.
    let h = Harness::new(by_rate(0.5, 4));
    h.fail(true);
    for _ in 0..3 {
        h.send().await.unwrap();
    }
    tokio::time::advance(9 * SECOND).await;
    h.send().await.unwrap();
    assert_eq!(h.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_the_probes_and_their_success_closes() {
    let mut h = Harness::new(consecutive(1, 2));
    h.fail(true);
    h.send().await.unwrap();
    tokio::time::advance(SECOND - MILLI).await;
    assert!(is_breaker_open(h.send().await));
    tokio::time::advance(MILLI).await;

    h.fail(false);
    h.upstream.gate(true);
    let first = h.start();
    let second = h.start();
    assert_eq!(h.state(), BreakerState::HalfOpen);
    assert!(is_breaker_open(h.start().await));
    assert_eq!(h.upstream.calls(), 3);

    h.upstream.release(2);
    assert_eq!(status(first.await), 200);
    assert_eq!(h.state(), BreakerState::HalfOpen);
    assert_eq!(status(second.await), 200);
    assert_eq!(h.state(), BreakerState::Closed);
    assert_eq!(h.opened_for(), None);
    assert!(h.metrics().contains(
        r#"remora_breaker_transitions_total{service="users",endpoint="",from="half-open",to="closed"} 1"#
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_twice_as_long_up_to_the_cap() {
    let h = Harness::new(consecutive(1, 1));
    h.fail(true);
    h.send().await.unwrap();
    assert_eq!(h.opened_for(), Some(SECOND));
    tokio::time::advance(SECOND).await;

    // Open 1s, then 2s, then 3s (4s capped), then 3s again.
    for open_for in [2 * SECOND, 3 * SECOND, 3 * SECOND] {
        assert_eq!(status(h.send().await), 503, "the probe goes through");
        assert_eq!(h.state(), BreakerState::Open);
        assert_eq!(h.opened_for(), Some(open_for));
        tokio::time::advance(open_for - MILLI).await;
        assert!(is_breaker_open(h.send().await));
        tokio::time::advance(MILLI).await;
    }
    assert_eq!(h.upstream.calls(), 4);

    // A successful probe closes and resets the backoff: the next trip opens for 1s.
    h.fail(false);
    h.send().await.unwrap();
    assert_eq!(h.state(), BreakerState::Closed);
    h.fail(true);
    h.send().await.unwrap();
    assert_eq!(h.opened_for(), Some(SECOND));
    tokio::time::advance(SECOND).await;
    h.send().await.unwrap();
    assert_eq!(h.opened_for(), Some(2 * SECOND));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_gives_its_slot_back() {
    let mut h = Harness::new(consecutive(1, 1));
    h.fail(true);
    h.send().await.unwrap();
    tokio::time::advance(SECOND).await;

    h.fail(false);
    h.upstream.gate(true);
    let probe = h.start();
    assert!(is_breaker_open(h.start().await));
    drop(probe);
    assert_eq!(h.state(), BreakerState::HalfOpen);

    let probe = h.start();
    assert_eq!(h.upstream.calls(), 3);
    h.upstream.release(1);
    assert_eq!(status(probe.await), 200);
    assert_eq!(h.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_outcome_from_before_half_open_is_not_a_probe() {
    let mut h = Harness::new(consecutive(1, 1));
    // Admitted while closed, answered (200) only when polled, after the trip.
    let slow = h.start();
    h.fail(true);
    h.send().await.unwrap();
    tokio::time::advance(SECOND).await;
    h.fail(false);
    let probe = h.start();
    assert_eq!(h.state(), BreakerState::HalfOpen);
    // `slow` succeeds, but it is no probe: the breaker stays half-open.
    assert_eq!(status(slow.await), 200);
    assert_eq!(h.state(), BreakerState::HalfOpen);
    assert_eq!(status(probe.await), 200);
    assert_eq!(h.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn no_healthy_endpoint_is_a_failure_and_remoras_own_refusals_are_not() {
    let h = Harness::new(consecutive(2, 1));
    h.fail_with(|| ProxyError::Overloaded("users".into()));
    for _ in 0..3 {
        assert!(h.send().await.is_err());
    }
    assert_eq!(h.state(), BreakerState::Closed);
    h.fail_with(|| ProxyError::NoHealthyEndpoint("users".into()));
    for _ in 0..2 {
        assert!(h.send().await.is_err());
    }
    assert_eq!(h.state(), BreakerState::Open);
}
