//! Shared rate limits through real sidecars and a real Redis: replicas spend one
//! budget, and a Redis that dies or freezes is met as `on_error` says, never with a
//! wait beyond the deadline, until it answers again.

use std::time::{Duration, Instant};

use crate::support::redis_harness::Redis;
use crate::support::*;

/// A policy `shared` of `rate` and `burst` in the Redis at `redis`, with `shared`
/// fields `extra` (YAML flow-map entries).
fn policies(redis: &Redis, rate: &str, burst: u32, extra: &str) -> String {
    format!(
        "  rate_limits:\n    shared:\n      rate: {rate}\n      burst: {burst}\n      \
         shared: {{ redis: \"redis://{}\", {extra} }}",
        redis.addr()
    )
}

async fn sidecar_with(policies: &str, upstream: std::net::SocketAddr) -> remora::Sidecar {
    with_policies(policies, "    rate_limit: shared", &[upstream]).await
}

fn url(proxy: &remora::Sidecar) -> String {
    format!("http://{}/", proxy.addrs().service("svc").unwrap())
}

/// GETs `url`; the status and how long the answer took.
async fn timed_get(url: &str) -> (u16, Duration) {
    let start = Instant::now();
    let (status, _, _) = get(url).await;
    (status.as_u16(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_one_shared_budget() {
    const RATE: f64 = 50.0;
    const BURST: f64 = 5.0;
    let redis = Redis::start().await;
    let (upstream, log) = scripted(|_| 200).await;
    let policies = policies(
        &redis,
        "50/s",
        5,
        "timeout: 500ms, on_error: closed, batch: 2",
    );
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(sidecar_with(&policies, upstream).await);
    }
    // Each replica is offered about 100 calls a second: six times the shared rate.
    let start = Instant::now();
    let load = replicas.iter().map(|replica| {
        let url = url(replica);
        tokio::spawn(async move {
            let client = http1_client();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut statuses = Vec::new();
            while start.elapsed() < Duration::from_secs(4) {
                tick.tick().await;
                let response = client.get(url.parse().unwrap()).await.unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        })
    });
    let mut offered = 0;
    for statuses in futures_util::future::join_all(load).await {
        let statuses = statuses.unwrap();
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "{statuses:?}"
        );
        offered += statuses.len();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = log.len() as f64;
    let expected = RATE * elapsed + BURST;
    assert!(
        offered as f64 > 3.0 * expected,
        "the load ({offered} calls) must be well above the limit"
    );
    assert!(
        (admitted - expected).abs() <= expected * 0.10,
        "admitted {admitted} calls in {elapsed:.2}s, expected {expected:.0} ± 10%"
    );
}

#[tokio::test]
async fn a_dead_redis_fails_closed_at_once_and_the_limit_recovers_on_restart() {
    let mut redis = Redis::start().await;
    let (upstream, _log) = scripted(|_| 200).await;
    let policies = policies(
        &redis,
        "1000/s",
        1000,
        "timeout: 100ms, on_error: closed, batch: 1",
    );
    let proxy = sidecar_with(&policies, upstream).await;
    let admin = proxy.addrs().admin.unwrap();
    for _ in 0..3 {
        assert_eq!(get(&url(&proxy)).await.0, 200);
    }
    let degraded = "remora_rate_limit_shared_degraded{service=\"svc\",limit=\"shared\"}";
    assert_eq!(metric(admin, degraded).await, 0.0);

    redis.kill();
    for _ in 0..10 {
        let (status, headers, _) = get(&url(&proxy)).await;
        assert_eq!(status, 429);
        assert_eq!(headers["x-remora-error"], "rate-limited");
        assert!(headers.contains_key("retry-after"));
    }
    for _ in 0..10 {
        let (status, took) = timed_get(&url(&proxy)).await;
        assert_eq!(status, 429);
        assert!(took < Duration::from_millis(100 + 500), "took {took:?}");
    }
    assert_eq!(metric(admin, degraded).await, 1.0);
    let errors =
        "remora_rate_limit_shared_errors_total{service=\"svc\",limit=\"shared\",reason=\"redis\"}";
    assert!(metric(admin, errors).await >= 1.0);

    // The same port, an empty Redis: the script is loaded again (NOSCRIPT).
    redis.restart().await;
    let recovered = eventually(Duration::from_secs(10), || async {
        get(&url(&proxy)).await.0 == 200
    })
    .await;
    assert!(
        recovered,
        "the limit did not use Redis again after its restart"
    );
    assert_eq!(metric(admin, degraded).await, 0.0);
}

#[tokio::test]
async fn a_frozen_redis_fails_open_within_the_deadline_and_the_limit_recovers() {
    let redis = Redis::start().await;
    let (upstream, log) = scripted(|_| 200).await;
    let policies = policies(&redis, "1/m", 1, "timeout: 100ms, on_error: open");
    let proxy = sidecar_with(&policies, upstream).await;
    let admin = proxy.addrs().admin.unwrap();
    assert_eq!(get(&url(&proxy)).await.0, 200);
    let (status, headers, _) = get(&url(&proxy)).await;
    assert_eq!(status, 429);
    // Redis's bucket says when: one token a minute, just taken.
    assert_eq!(headers["retry-after"], "60");
    assert_eq!(headers["x-remora-error"], "rate-limited");

    // Connections stay open and nothing answers: only the deadline ends the wait.
    redis.freeze();
    for _ in 0..10 {
        let (status, took) = timed_get(&url(&proxy)).await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_millis(100 + 500), "took {took:?}");
    }
    assert_eq!(log.len(), 11);
    let timeouts =
        "remora_rate_limit_shared_errors_total{service=\"svc\",limit=\"shared\",reason=\"timeout\"}";
    assert!(metric(admin, timeouts).await >= 1.0);
    let degraded = "remora_rate_limit_shared_degraded{service=\"svc\",limit=\"shared\"}";
    assert_eq!(metric(admin, degraded).await, 1.0);

    // The bucket is still empty in Redis: once it answers, calls are refused again.
    redis.thaw();
    let recovered = eventually(Duration::from_secs(10), || async {
        get(&url(&proxy)).await.0 == 429
    })
    .await;
    assert!(
        recovered,
        "the limit did not use Redis again after it thawed"
    );
    assert_eq!(metric(admin, degraded).await, 0.0);
}

#[tokio::test]
async fn without_redis_a_local_fallback_counts_on_this_replica_alone() {
    let mut redis = Redis::start().await;
    let (upstream, _log) = scripted(|_| 200).await;
    let policies = policies(&redis, "1/m", 2, "timeout: 100ms, on_error: local");
    let proxy = sidecar_with(&policies, upstream).await;
    // Redis's bucket: two calls, then refusals.
    let statuses = [get(&url(&proxy)).await.0, get(&url(&proxy)).await.0];
    assert_eq!(statuses, [200, 200]);
    assert_eq!(get(&url(&proxy)).await.0, 429);

    // The replica's own bucket, untouched while Redis answered, takes over.
    redis.kill();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, took) = timed_get(&url(&proxy)).await;
        assert!(took < Duration::from_millis(100 + 500), "took {took:?}");
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
}

#[tokio::test]
async fn two_services_naming_one_limit_keep_apart_buckets() {
    let redis = Redis::start().await;
    let (upstream, _log) = scripted(|_| 200).await;
    let policies = policies(&redis, "1/m", 1, "timeout: 100ms, on_error: closed");
    let service = |name: &str| {
        format!(
            "  {name}:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n    rate_limit: shared\n"
        )
    };
    let proxy = sidecar(&format!(
        "policies:\n{policies}\nservices:\n{}{}",
        service("orders"),
        service("prices")
    ))
    .await;
    let url = |name| format!("http://{}/", proxy.addrs().service(name).unwrap());
    assert_eq!(get(&url("orders")).await.0, 200);
    assert_eq!(get(&url("orders")).await.0, 429);
    // The key names the service: the other one's bucket is still full.
    assert_eq!(get(&url("prices")).await.0, 200);
    assert_eq!(get(&url("prices")).await.0, 429);
}
