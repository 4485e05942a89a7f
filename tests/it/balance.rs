//! Balancing through real sockets: `Forward` over an `EndpointSet` of live upstreams.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use remora::balance::{Balancer, BalancerConfig, EndpointSet, HashAlgorithm, HashKey};
use remora::config::{UpstreamProtocol, UpstreamSection};
use remora::core::body::ProxyBody;
use remora::core::call::EndpointUsed;
use remora::discovery::Instance;
use remora::upstream::{Forward, UpstreamClients};
use tower::ServiceExt;

use crate::support::*;

/// An upstream answering 200 after `delay`.
async fn answering_after(delay: Duration) -> std::net::SocketAddr {
    serve(move |_request: Request<Incoming>| async move {
        tokio::time::sleep(delay).await;
        Response::new(full("ok"))
    })
    .await
}

fn forward_to(set: &Arc<EndpointSet>) -> Forward {
    Forward::new(
        "svc".into(),
        set.clone(),
        UpstreamProtocol::Http1,
        UpstreamClients::new(remora::build::resolve::pool(&UpstreamSection::default())),
    )
}

/// One call; the endpoint that answered.
async fn call(forward: &Forward, request: Request<ProxyBody>) -> std::net::SocketAddr {
    let response = forward.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.extensions().get::<EndpointUsed>().unwrap().0
}

fn get(path: &str) -> Request<ProxyBody> {
    Request::builder()
        .uri(path)
        .body(ProxyBody::empty())
        .unwrap()
}

#[tokio::test]
async fn p2c_peak_ewma_sends_most_calls_to_the_faster_endpoint() {
    let slow = answering_after(Duration::from_millis(20)).await;
    let fast = answering_after(Duration::from_millis(1)).await;
    let set = Arc::new(EndpointSet::new());
    // The slow one first: it is not favoured by being listed first.
    set.update(&[Instance::new(slow), Instance::new(fast)]);
    let forward = forward_to(&set);

    let mut to_fast = 0;
    for _ in 0..300 {
        if call(&forward, get("/")).await == fast {
            to_fast += 1;
        }
    }
    assert!(
        to_fast >= 210,
        "{to_fast} of 300 calls went to the fast endpoint"
    );

    let views = set.views();
    assert!(views.iter().all(|v| v.in_flight == 0), "{views:?}");
    let (slow_view, fast_view) = (&views[0], &views[1]);
    assert!(
        slow_view.ewma_ms > fast_view.ewma_ms,
        "the slow endpoint's estimate is the higher: {views:?}"
    );
}

#[tokio::test]
async fn consistent_hashing_keeps_each_user_on_one_endpoint() {
    let one = answering_after(Duration::ZERO).await;
    let two = answering_after(Duration::ZERO).await;
    let config = BalancerConfig::try_new(
        Balancer::ConsistentHash {
            key: HashKey::Header("x-user".parse().unwrap()),
            algorithm: HashAlgorithm::maglev(),
        },
        50,
    )
    .unwrap();
    let set = Arc::new(EndpointSet::with_config(config));
    set.update(&[Instance::new(one), Instance::new(two)]);
    let forward = forward_to(&set);

    let mut homes = Vec::new();
    for user in 0..20 {
        let as_user = || {
            Request::builder()
                .uri("/")
                .header("x-user", format!("user-{user}"))
                .body(ProxyBody::empty())
                .unwrap()
        };
        let home = call(&forward, as_user()).await;
        for _ in 0..4 {
            assert_eq!(call(&forward, as_user()).await, home, "user-{user}");
        }
        homes.push(home);
    }
    assert!(homes.contains(&one) && homes.contains(&two), "{homes:?}");
}

#[tokio::test]
async fn an_abandoned_attempt_leaves_the_in_flight_count_and_a_slow_sample() {
    let stuck = answering_after(Duration::from_secs(5)).await;
    let set = Arc::new(EndpointSet::new());
    set.update(&[Instance::new(stuck)]);
    let forward = forward_to(&set);

    let call = forward.clone().oneshot(get("/"));
    let timed_out = tokio::time::timeout(Duration::from_millis(100), call).await;
    assert!(timed_out.is_err());

    let endpoint = set.snapshot()[0].clone();
    assert_eq!(endpoint.in_flight.load(Ordering::Relaxed), 0);
    let view = &set.views()[0];
    assert!(
        view.ewma_ms >= 100.0,
        "sampled as at least 100 ms: {view:?}"
    );
}
