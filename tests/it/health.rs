//! Active health checks and passive outlier ejection through real sockets: HTTP, TCP and
//! gRPC probes against real servers, and ejection fed by `Forward`'s real attempts.
//!
//! Probes run every 50 ms; every wait polls for the flag with a generous deadline, so a
//! slow machine makes a test slower, never wrong.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use remora::balance::EndpointSet;
use remora::config::{UpstreamProtocol, UpstreamSection};
use remora::core::body::ProxyBody;
use remora::core::call::EndpointUsed;
use remora::discovery::Instance;
use remora::health::{
    HealthCheckConfig, HealthChecker, HealthMetrics, OutlierConfig, OutlierDetector, Probe,
};
use remora::upstream::{EndpointObserver, Forward, UpstreamClients};
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use tower::ServiceExt;

use crate::support::{self, eventually, full, metrics_text, TestBody};

const INTERVAL: Duration = Duration::from_millis(50);
/// Generous: a probe of a live local server never takes this long, even on a busy machine.
const TIMEOUT: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(15);

/// Round robin, so that every endpoint gets its share of calls whatever its latency (P2C
/// over two endpoints always picks the cheaper one, and could starve the failing one).
fn endpoint_set(addrs: &[SocketAddr]) -> Arc<EndpointSet> {
    let config =
        remora::balance::BalancerConfig::try_new(remora::balance::Balancer::RoundRobin, 50)
            .unwrap();
    let set = Arc::new(EndpointSet::with_config(config));
    let instances: Vec<Instance> = addrs.iter().copied().map(Instance::new).collect();
    set.update(&instances);
    set
}

fn unhealthy(set: &EndpointSet, addr: SocketAddr) -> bool {
    set.snapshot()
        .iter()
        .find(|endpoint| endpoint.addr == addr)
        .expect("endpoint in the set")
        .readiness
        .unhealthy
        .load(Ordering::Relaxed)
}

fn check(probe: Probe) -> HealthCheckConfig {
    HealthCheckConfig::try_new(probe, INTERVAL, TIMEOUT, 3, 2, 0.0).unwrap()
}

fn health_registry() -> (Registry, HealthMetrics) {
    let mut registry = Registry::with_prefix("remora");
    let metrics = HealthMetrics::register(&mut registry);
    (registry, metrics)
}

fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

/// The value of `series` in `registry`; fails when no sample has it.
fn series(registry: &Registry, series: &str) -> f64 {
    metrics_text::value(&encode(registry), series)
}

/// An HTTP upstream whose `/healthz` answers 500 while `failing`, 200 otherwise; any
/// other path answers 200 (or 500 while `failing_calls`), counting what it served.
#[derive(Default)]
struct Upstream {
    failing: AtomicBool,
    failing_calls: AtomicBool,
    healthz_failed: AtomicUsize,
    healthz_passed: AtomicUsize,
    calls: AtomicUsize,
}

impl Upstream {
    async fn start() -> (SocketAddr, Arc<Self>) {
        let state = Arc::new(Self::default());
        let shared = state.clone();
        let addr = support::serve(move |request: Request<Incoming>| {
            let state = shared.clone();
            async move { state.answer(&request) }
        })
        .await;
        (addr, state)
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<TestBody> {
        let failed = if request.uri().path() == "/healthz" {
            let failing = self.failing.load(Ordering::SeqCst);
            let served = if failing {
                &self.healthz_failed
            } else {
                &self.healthz_passed
            };
            served.fetch_add(1, Ordering::SeqCst);
            failing
        } else {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.failing_calls.load(Ordering::SeqCst)
        };
        let status = if failed {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        Response::builder().status(status).body(full("ok")).unwrap()
    }
}

fn forward(set: &Arc<EndpointSet>) -> Forward {
    Forward::new(
        "users".into(),
        set.clone(),
        UpstreamProtocol::Http1,
        UpstreamClients::new(remora::build::resolve::pool(&UpstreamSection::default())),
    )
}

/// Sends `GET /` through `forward`; the endpoint that answered, and the status.
async fn call(forward: &Forward) -> (SocketAddr, StatusCode) {
    let request = Request::get("/").body(ProxyBody::empty()).unwrap();
    let response = forward.clone().oneshot(request).await.unwrap();
    let EndpointUsed(addr, _) = *response.extensions().get::<EndpointUsed>().unwrap();
    (addr, response.status())
}

#[tokio::test]
async fn a_failing_http_endpoint_leaves_rotation_and_comes_back() {
    let (a, upstream_a) = Upstream::start().await;
    let (b, _upstream_b) = Upstream::start().await;
    let set = endpoint_set(&[a, b]);
    let (registry, metrics) = health_registry();
    let checker = HealthChecker::spawn(
        "users".into(),
        check(Probe::http("/healthz")),
        set.clone(),
        Default::default(),
        metrics,
    );

    // Passing probes keep it in.
    let probed = eventually(DEADLINE, || async {
        upstream_a.healthz_passed.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert!(probed, "a was never probed");
    assert!(!unhealthy(&set, a));

    upstream_a.failing.store(true, Ordering::SeqCst);
    assert!(
        eventually(DEADLINE, || async { unhealthy(&set, a) }).await,
        "a never left rotation"
    );
    assert!(
        upstream_a.healthz_failed.load(Ordering::SeqCst) >= 3,
        "held out before unhealthy_threshold failed probes"
    );
    assert!(!unhealthy(&set, b));
    let forward = forward(&set);
    for _ in 0..10 {
        assert_eq!(call(&forward).await, (b, StatusCode::OK));
    }

    let passed_before = upstream_a.healthz_passed.load(Ordering::SeqCst);
    upstream_a.failing.store(false, Ordering::SeqCst);
    assert!(
        eventually(DEADLINE, || async { !unhealthy(&set, a) }).await,
        "a never came back"
    );
    assert!(
        upstream_a.healthz_passed.load(Ordering::SeqCst) - passed_before >= 2,
        "back before healthy_threshold passed probes"
    );

    assert_eq!(
        series(
            &registry,
            r#"remora_health_transitions_total{service="users",state="unhealthy"}"#
        ),
        1.0
    );
    assert_eq!(
        series(
            &registry,
            r#"remora_health_transitions_total{service="users",state="healthy"}"#
        ),
        1.0
    );
    assert!(
        series(
            &registry,
            r#"remora_health_probes_total{service="users",result="failure"}"#
        ) >= 3.0
    );
    assert!(
        series(
            &registry,
            r#"remora_health_probes_total{service="users",result="success"}"#
        ) >= 5.0
    );
    checker.stop().await;
}

#[tokio::test]
async fn a_closed_port_fails_the_tcp_probe_and_a_vanished_endpoint_is_forgotten() {
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_addr = live.local_addr().unwrap();
    let closed_addr = {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        closed.local_addr().unwrap()
    };
    let set = endpoint_set(&[live_addr, closed_addr]);
    let (registry, metrics) = health_registry();
    let checker = HealthChecker::spawn(
        "users".into(),
        check(Probe::Tcp),
        set.clone(),
        Default::default(),
        metrics,
    );

    assert!(
        eventually(DEADLINE, || async { unhealthy(&set, closed_addr) }).await,
        "the closed port was never marked unhealthy"
    );
    assert!(!unhealthy(&set, live_addr));
    let gauges = "remora_health_endpoints";
    let gauge = |state: &str| {
        series(
            &registry,
            &format!(r#"{gauges}{{service="users",state="{state}"}}"#),
        )
    };
    assert_eq!((gauge("healthy"), gauge("unhealthy")), (1.0, 1.0));

    // Discovery drops it: its state goes with it.
    set.update(&[Instance::new(live_addr)]);
    assert!(
        eventually(DEADLINE, || async { gauge("unhealthy") == 0.0 }).await,
        "the vanished endpoint is still counted"
    );
    assert_eq!(gauge("healthy"), 1.0);

    // A stopped checker holds nothing out and shows no gauge.
    set.update(&[Instance::new(live_addr), Instance::new(closed_addr)]);
    assert!(eventually(DEADLINE, || async { unhealthy(&set, closed_addr) }).await);
    checker.stop().await;
    assert!(!unhealthy(&set, closed_addr));
    let text = encode(&registry);
    assert_eq!(metrics_text::samples_named(&text, gauges), [], "{text}");
    drop(live);
}

#[tokio::test]
async fn the_grpc_probe_follows_the_health_service() {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("users", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let set = endpoint_set(&[addr]);
    let (registry, metrics) = health_registry();
    let grpc = |service: &str| {
        check(Probe::Grpc {
            service: service.into(),
        })
    };
    let checker = HealthChecker::spawn(
        "users".into(),
        grpc("users"),
        set.clone(),
        Default::default(),
        metrics,
    );
    // Absent until the first probe is counted, which is zero successes (reaching 3 proves
    // the spelling).
    let successes = || {
        metrics_text::value_or_zero(
            &encode(&registry),
            r#"remora_health_probes_total{service="users",result="success"}"#,
        )
    };
    assert!(
        eventually(DEADLINE, || async { successes() >= 3.0 }).await,
        "SERVING never passed the probe"
    );
    assert!(!unhealthy(&set, addr));

    reporter
        .set_service_status("users", ServingStatus::NotServing)
        .await;
    assert!(
        eventually(DEADLINE, || async { unhealthy(&set, addr) }).await,
        "NOT_SERVING never held the endpoint out"
    );
    reporter
        .set_service_status("users", ServingStatus::Serving)
        .await;
    assert!(
        eventually(DEADLINE, || async { !unhealthy(&set, addr) }).await,
        "SERVING again never let it back"
    );
    checker.stop().await;

    // A service the server does not know answers NOT_FOUND: unhealthy too. The whole
    // server (empty name) is serving.
    let unknown_set = endpoint_set(&[addr]);
    let (_registry, metrics) = health_registry();
    let unknown = HealthChecker::spawn(
        "users".into(),
        grpc("nobody"),
        unknown_set.clone(),
        Default::default(),
        metrics.clone(),
    );
    let server_set = endpoint_set(&[addr]);
    let server = HealthChecker::spawn(
        "users".into(),
        grpc(""),
        server_set.clone(),
        Default::default(),
        metrics,
    );
    assert!(eventually(DEADLINE, || async { unhealthy(&unknown_set, addr) }).await);
    assert!(!unhealthy(&server_set, addr));
    drop((unknown, server));
}

#[tokio::test]
async fn failing_calls_eject_an_endpoint_through_forward() {
    let (a, upstream_a) = Upstream::start().await;
    let (b, upstream_b) = Upstream::start().await;
    upstream_a.failing_calls.store(true, Ordering::SeqCst);
    let set = endpoint_set(&[a, b]);
    let (registry, metrics) = health_registry();
    let config = OutlierConfig::try_new(
        3,
        OutlierConfig::default_failure_on(),
        Duration::from_secs(60),
        Duration::from_secs(300),
        50,
    )
    .unwrap();
    let detector = Arc::new(OutlierDetector::new(
        "users".into(),
        config,
        set.clone(),
        metrics,
    ));
    let forward = forward(&set).with_observers(vec![detector.clone() as Arc<dyn EndpointObserver>]);

    let ejected = || {
        set.snapshot()
            .iter()
            .find(|endpoint| endpoint.addr == a)
            .unwrap()
            .readiness
            .ejected
            .load(Ordering::Relaxed)
    };
    for _ in 0..200 {
        if ejected() {
            break;
        }
        call(&forward).await;
    }
    assert!(ejected(), "a was never ejected");
    assert_eq!(
        upstream_a.calls.load(Ordering::SeqCst),
        3,
        "ejected after exactly 3 failed calls"
    );
    let answered_by_b = upstream_b.calls.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(call(&forward).await, (b, StatusCode::OK));
    }
    assert_eq!(upstream_a.calls.load(Ordering::SeqCst), 3);
    assert_eq!(upstream_b.calls.load(Ordering::SeqCst), answered_by_b + 10);
    assert_eq!(
        series(&registry, r#"remora_outlier_ejected{service="users"}"#),
        1.0
    );
    let views = detector.snapshot();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].endpoint, a);
    assert_eq!(views[0].times_ejected, 1);
}
