//! Routing through the real proxy: header, regex path and query matches pick a route; a
//! route splits its requests over weighted (optionally sticky) backends, edits headers,
//! rewrites a path prefix, answers itself (fixed answer, redirect), and mirrors a share
//! of its requests to another service without the caller noticing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::support::*;

/// The config of a sidecar whose service `orders` (dedicated port) has `routes` (list
/// items indented by 6) and the first backend's endpoint; every backend is a service of
/// its own (dedicated port, so that it is reachable).
fn front_config(routes: &str, backends: &[(&str, SocketAddr)]) -> String {
    let mut yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  orders:\n    listen: 127.0.0.1:0\n    endpoints: [{}]\n    routes:\n{routes}\n",
        backends[0].1
    );
    for (name, addr) in backends {
        yaml.push_str(&format!(
            "  {name}:\n    listen: 127.0.0.1:0\n    endpoints: [{addr}]\n"
        ));
    }
    yaml
}

async fn front(routes: &str, backends: &[(&str, SocketAddr)]) -> remora::Sidecar {
    sidecar(&front_config(routes, backends)).await
}

fn url(proxy: &remora::Sidecar, path: &str) -> String {
    format!("http://{}{path}", proxy.addrs().service("orders").unwrap())
}

/// GET `url` with `headers`; returns status, headers and body text.
async fn call(url: &str, headers: &[(&str, &str)]) -> (http::StatusCode, http::HeaderMap, String) {
    let mut request = Request::builder().uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let response = http1_client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The `x-upstream` that answered a GET of `path` with `headers`.
async fn answered_by(proxy: &remora::Sidecar, path: &str, headers: &[(&str, &str)]) -> String {
    let (status, answer, _) = call(&url(proxy, path), headers).await;
    assert_eq!(status, 200, "{path}");
    answer["x-upstream"].to_str().unwrap().to_string()
}

/// Sends `total` GETs of `path` over `tasks` concurrent connections; returns how many
/// each upstream answered (`x-upstream`), and the failures.
async fn spread(url: String, total: usize, tasks: usize) -> (Vec<(String, usize)>, usize) {
    let client = http1_client();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let client = client.clone();
        let url = url.clone();
        handles.push(tokio::spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            let mut failed = 0;
            for _ in 0..total / tasks {
                match client.get(url.parse().unwrap()).await {
                    Ok(response) if response.status() == 200 => {
                        let name = response.headers()["x-upstream"]
                            .to_str()
                            .unwrap()
                            .to_string();
                        let _ = response.into_body().collect().await;
                        seen.push(name);
                    }
                    _ => failed += 1,
                }
            }
            (seen, failed)
        }));
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut failed = 0;
    for handle in handles {
        let (seen, failures) = handle.await.unwrap();
        failed += failures;
        for name in seen {
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => *count += 1,
                None => counts.push((name, 1)),
            }
        }
    }
    counts.sort();
    (counts, failed)
}

fn count_of(counts: &[(String, usize)], name: &str) -> usize {
    counts
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, count)| *count)
}

#[tokio::test]
async fn a_header_match_sends_canaries_to_v2_and_everything_else_to_v1() {
    let (v1, _) = recording("v1").await;
    let (v2, _) = recording("v2").await;
    let routes = "      - name: canary\n        match: { headers: { x-canary: { exact: 'true' } } }\n        backends: { v2: 1 }\n\
                  \x20     - name: everyone\n        match: { path_prefix: / }\n        backends: { v1: 1 }\n";
    let proxy = front(routes, &[("v1", v1), ("v2", v2)]).await;
    assert_eq!(
        answered_by(&proxy, "/a", &[("x-canary", "true")]).await,
        "v2"
    );
    assert_eq!(
        answered_by(&proxy, "/a", &[("x-canary", "false")]).await,
        "v1"
    );
    assert_eq!(answered_by(&proxy, "/a", &[]).await, "v1");
    let admin = proxy.addrs().admin.unwrap();
    let canaries = "remora_requests_total{direction=\"outbound\",service=\"orders\",route=\"canary\",status=\"200\",grpc_code=\"\",classification=\"success\"}";
    assert_eq!(metric(admin, canaries).await, 1.0);
}

/// A canary reached only through a route needs no listener of its own: no `listen`, no
/// shared outbound listener, and the config is accepted and the canary served.
#[tokio::test]
async fn a_backend_reached_only_through_routes_needs_no_listener() {
    let (v1, _) = recording("v1").await;
    let (v2, _) = recording("v2").await;
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  orders:\n    listen: 127.0.0.1:0\n    endpoints: [{v1}]\n    routes:\n\
         \x20     - name: canary\n        match: {{ headers: {{ x-canary: {{ exact: 'true' }} }} }}\n        backends: {{ orders-v2: 1 }}\n\
         \x20 orders-v2:\n    endpoints: [{v2}]\n"
    ))
    .await;
    assert_eq!(
        answered_by(&proxy, "/a", &[("x-canary", "true")]).await,
        "v2"
    );
    assert_eq!(answered_by(&proxy, "/a", &[]).await, "v1");
    assert!(proxy.addrs().service("orders-v2").is_none());
}

#[tokio::test]
async fn a_90_10_split_lands_within_one_and_a_half_points() {
    let (v1, _) = recording("v1").await;
    let (v2, _) = recording("v2").await;
    let routes = "      - match: { path_prefix: / }\n        backends: { v1: 90, v2: 10 }\n";
    let proxy = front(routes, &[("v1", v1), ("v2", v2)]).await;
    let (counts, failed) = spread(url(&proxy, "/split"), 10_000, 16).await;
    assert_eq!(failed, 0);
    let v2_share = count_of(&counts, "v2") as f64 / 100.0;
    assert!(
        (8.5..=11.5).contains(&v2_share),
        "{counts:?}: {v2_share}% on v2"
    );
    assert_eq!(count_of(&counts, "v1") + count_of(&counts, "v2"), 10_000);
}

#[tokio::test]
async fn a_sticky_split_keeps_each_key_on_one_backend() {
    let (v1, _) = recording("v1").await;
    let (v2, _) = recording("v2").await;
    let routes = "      - match: { path_prefix: / }\n        backends: { v1: 50, v2: 50 }\n        sticky: header:x-user\n";
    let proxy = front(routes, &[("v1", v1), ("v2", v2)]).await;
    let mut used = Vec::new();
    for user in 0..40 {
        let key = format!("user-{user}");
        let first = answered_by(&proxy, "/cart", &[("x-user", &key)]).await;
        for _ in 0..5 {
            let again = answered_by(&proxy, "/cart", &[("x-user", &key)]).await;
            assert_eq!(again, first, "{key} moved");
        }
        used.push(first);
    }
    assert!(
        used.iter().any(|u| u == "v1") && used.iter().any(|u| u == "v2"),
        "{used:?}"
    );
}

/// An upstream that answers after `delay`, naming itself in `x-upstream`.
async fn slow(name: &'static str, delay: Duration) -> SocketAddr {
    serve(move |request: Request<Incoming>| async move {
        let _ = request.into_body().collect().await;
        tokio::time::sleep(delay).await;
        Response::builder()
            .header("x-upstream", name)
            .body(full("ok"))
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn a_weight_change_by_reload_under_load_fails_no_request() {
    let v1 = slow("v1", Duration::from_millis(5)).await;
    let v2 = slow("v2", Duration::from_millis(5)).await;
    let split = |w1: u32, w2: u32| {
        format!("      - match: {{ path_prefix: / }}\n        backends: {{ v1: {w1}, v2: {w2} }}\n")
    };
    let backends = [("v1", v1), ("v2", v2)];
    let proxy = front(&split(100, 0), &backends).await;
    let target = url(&proxy, "/load");
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let client = http1_client();
    let mut load = Vec::new();
    for _ in 0..8 {
        let (client, target) = (client.clone(), target.clone());
        let (stop, failed, sent) = (stop.clone(), failed.clone(), sent.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = match client.get(target.parse().unwrap()).await {
                    Ok(response) => {
                        response.status() == 200 && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (w1, w2) in [(50, 50), (0, 100), (100, 0), (0, 100)] {
        let config = remora::build::parse("test.yaml", &front_config(&split(w1, w2), &backends))
            .unwrap_or_else(|e| panic!("{e}"));
        proxy.handle().reload(config).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(sent.load(Ordering::Relaxed) > 100, "the load ran");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across reloads"
    );
    assert_eq!(
        answered_by(&proxy, "/after", &[]).await,
        "v2",
        "the last weights hold"
    );
}

#[tokio::test]
async fn regex_path_and_query_matches_pick_their_routes() {
    let (v1, _) = recording("v1").await;
    let (v2, _) = recording("v2").await;
    let (v3, _) = recording("v3").await;
    let routes = "      - name: user\n        match: { path_regex: '/users/[0-9]+' }\n        backends: { v2: 1 }\n\
                  \x20     - name: beta\n        match: { query: { version: { regex: '2\\.[0-9]+' } } }\n        backends: { v3: 1 }\n";
    let proxy = front(routes, &[("v1", v1), ("v2", v2), ("v3", v3)]).await;
    assert_eq!(answered_by(&proxy, "/users/42", &[]).await, "v2");
    assert_eq!(answered_by(&proxy, "/users/abc", &[]).await, "v1");
    assert_eq!(answered_by(&proxy, "/users/42/orders", &[]).await, "v1");
    assert_eq!(answered_by(&proxy, "/x?version=2.1", &[]).await, "v3");
    assert_eq!(answered_by(&proxy, "/x?a=1&version=2.10", &[]).await, "v3");
    assert_eq!(answered_by(&proxy, "/x?version=3", &[]).await, "v1");
    // The exact-ish regex path outranks the query route.
    assert_eq!(answered_by(&proxy, "/users/7?version=2.1", &[]).await, "v2");
}

#[tokio::test]
async fn header_edits_are_seen_by_the_app_and_by_the_client() {
    let (v1, log) = recording("v1").await;
    let routes = "      - match: { path_prefix: / }\n\
                  \x20       request_headers: { add: { x-added: one }, set: { x-env: prod }, remove: [x-secret] }\n\
                  \x20       response_headers: { set: { x-served-by: remora }, remove: [x-upstream] }\n";
    let proxy = front(routes, &[("v1", v1)]).await;
    let (status, headers, _) =
        call(&url(&proxy, "/h"), &[("x-env", "dev"), ("x-secret", "s")]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-served-by"], "remora");
    assert!(headers.get("x-upstream").is_none());
    let seen = &log.all()[0].headers;
    assert_eq!(seen["x-added"], "one");
    assert_eq!(seen["x-env"], "prod");
    assert!(seen.get("x-secret").is_none());
}

/// A route that sets a trace header does not send it beside remora's own context: the
/// upstream sees one trace, remora's, whatever the caller sent.
#[tokio::test]
async fn a_trace_header_a_route_sets_is_replaced_like_a_callers() {
    let (v1, log) = recording("v1").await;
    let routes = "      - match: { path_prefix: / }\n\
                  \x20       request_headers: { set: { x-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7, x-env: prod } }\n";
    let proxy = front(routes, &[("v1", v1)]).await;
    let (status, _, _) = call(&url(&proxy, "/h"), &[]).await;
    assert_eq!(status, 200);
    let seen = &log.all()[0].headers;
    assert_eq!(seen["x-env"], "prod");
    assert!(
        seen.get("traceparent").is_some(),
        "remora's context is sent"
    );
    assert!(
        seen.get("x-b3-traceid").is_none(),
        "the route's trace header is replaced: {seen:?}"
    );
}

#[tokio::test]
async fn a_prefix_rewrite_changes_the_path_the_app_sees() {
    let (v1, log) = recording("v1").await;
    let routes =
        "      - match: { path_prefix: /old }\n        rewrite: { path_prefix: /new/api }\n";
    let proxy = front(routes, &[("v1", v1)]).await;
    let (status, _, body) = call(&url(&proxy, "/old/items?x=1"), &[]).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "echo:/new/api/items")
    );
    let (_, _, body) = call(&url(&proxy, "/older"), &[]).await;
    assert_eq!(body, "echo:/older", "not under the prefix: untouched");
    assert_eq!(log.len(), 2);
}

#[tokio::test]
async fn a_direct_response_answers_without_the_app() {
    let (v1, log) = recording("v1").await;
    let routes = "      - match: { path: /teapot }\n        respond: { status: 418, body: short and stout, headers: { content-type: text/plain } }\n        response_headers: { add: { x-route: teapot } }\n";
    let proxy = front(routes, &[("v1", v1)]).await;
    let (status, headers, body) = call(&url(&proxy, "/teapot"), &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (418, "short and stout"));
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(headers["x-route"], "teapot");
    assert_eq!(log.len(), 0);
    let (status, _, _) = call(&url(&proxy, "/teapot/more"), &[]).await;
    assert_eq!(status, 200, "an exact path takes that path only");
}

#[tokio::test]
async fn a_redirect_builds_its_location_from_the_request() {
    let (v1, log) = recording("v1").await;
    let routes = "      - match: { path_prefix: /legacy }\n        redirect: { status: 301, scheme: https, host: shop.example, path: /modern }\n\
                  \x20     - match: { path_prefix: /moved }\n        redirect: { status: 308, path: /here }\n";
    let proxy = front(routes, &[("v1", v1)]).await;
    let (status, headers, _) = call(&url(&proxy, "/legacy/x?q=1"), &[]).await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "https://shop.example/modern?q=1");
    let (status, headers, _) = call(&url(&proxy, "/moved"), &[("host", "shop:8080")]).await;
    assert_eq!(status, 308);
    assert_eq!(headers["location"], "http://shop:8080/here");
    assert_eq!(log.len(), 0);
}

fn mirror_counter(reason: Option<&str>) -> String {
    match reason {
        None => "remora_mirrored_requests_total{service=\"orders\",mirror=\"shadow\"}".into(),
        Some(reason) => format!(
            "remora_mirror_dropped_total{{service=\"orders\",mirror=\"shadow\",reason=\"{reason}\"}}"
        ),
    }
}

#[tokio::test]
async fn a_mirror_receives_about_its_share() {
    let (v1, primary) = recording("v1").await;
    let (shadow, copies) = recording("shadow").await;
    let routes =
        "      - match: { path_prefix: / }\n        mirror: { service: shadow, percent: 25% }\n";
    let proxy = front(routes, &[("v1", v1), ("shadow", shadow)]).await;
    let (counts, failed) = spread(url(&proxy, "/m"), 2000, 8).await;
    assert_eq!((failed, count_of(&counts, "v1")), (0, 2000));
    let admin = proxy.addrs().admin.unwrap();
    let sent = metric(admin, &mirror_counter(None)).await as usize;
    assert!(
        (400..=600).contains(&sent),
        "{sent} of 2000 mirrored at 25%"
    );
    assert!(
        eventually(Duration::from_secs(5), || async { copies.len() == sent }).await,
        "{} copies arrived, {sent} sent",
        copies.len()
    );
    assert_eq!(primary.len(), 2000);
    assert!(copies.all().iter().all(|seen| seen.path == "/m"));
}

#[tokio::test]
async fn a_mirror_that_never_answers_changes_neither_status_nor_latency() {
    let (v1, _) = recording("v1").await;
    let held = Arc::new(AtomicUsize::new(0));
    let arrived = held.clone();
    let shadow = serve(move |_request: Request<Incoming>| {
        arrived.fetch_add(1, Ordering::SeqCst);
        async move { std::future::pending::<Response<TestBody>>().await }
    })
    .await;
    let plain = front(
        "      - match: { path_prefix: /unused }\n        retry: none\n",
        &[("v1", v1)],
    )
    .await;
    let routes = "      - match: { path_prefix: / }\n        mirror: { service: shadow, max_in_flight: 4, timeout: 60s }\n";
    let mirrored = front(routes, &[("v1", v1), ("shadow", shadow)]).await;

    let timed = |url: String| async move {
        let mut slowest = Duration::ZERO;
        let started = Instant::now();
        for _ in 0..100 {
            let one = Instant::now();
            let (status, _, _) = call(&url, &[]).await;
            assert_eq!(status, 200);
            slowest = slowest.max(one.elapsed());
        }
        (started.elapsed(), slowest)
    };
    let (plain_total, _) = timed(url(&plain, "/t")).await;
    let (mirrored_total, slowest) = timed(url(&mirrored, "/t")).await;
    assert!(
        slowest < Duration::from_secs(1),
        "a call waited for the mirror: {slowest:?}"
    );
    assert!(
        mirrored_total < plain_total * 3 + Duration::from_millis(500),
        "mirrored {mirrored_total:?} against {plain_total:?} without"
    );
    let admin = mirrored.addrs().admin.unwrap();
    assert_eq!(
        metric(admin, &mirror_counter(None)).await,
        4.0,
        "the cap held"
    );
    assert_eq!(metric(admin, &mirror_counter(Some("full"))).await, 96.0);
    assert!(
        eventually(Duration::from_secs(5), || async {
            held.load(Ordering::SeqCst) == 4
        })
        .await
    );
}

#[tokio::test]
async fn a_body_over_the_bound_is_not_mirrored() {
    let (v1, primary) = recording("v1").await;
    let (shadow, copies) = recording("shadow").await;
    let routes = "      - match: { path_prefix: / }\n        mirror: { service: shadow, max_body_bytes: 1024 }\n";
    let proxy = front(routes, &[("v1", v1), ("shadow", shadow)]).await;
    let (status, _, _) = send("POST", &url(&proxy, "/big"), vec![b'x'; 10 * 1024]).await;
    assert_eq!(status, 200);
    let (status, _, _) = send("POST", &url(&proxy, "/small"), vec![b'y'; 100]).await;
    assert_eq!(status, 200);
    assert!(eventually(Duration::from_secs(5), || async { copies.len() == 1 }).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let copies = copies.all();
    assert_eq!(copies.len(), 1, "only the small body was copied");
    assert_eq!(
        (copies[0].path.as_str(), copies[0].body.len()),
        ("/small", 100)
    );
    assert_eq!(
        primary.all()[0].body.len(),
        10 * 1024,
        "the primary got the whole body"
    );
    let admin = proxy.addrs().admin.unwrap();
    assert_eq!(metric(admin, &mirror_counter(Some("body"))).await, 1.0);
    assert_eq!(metric(admin, &mirror_counter(None)).await, 1.0);
}

#[tokio::test]
async fn bad_routes_are_refused_at_their_field() {
    let backends = [("v1", dead_endpoint()), ("v2", dead_endpoint())];
    let cases = [
        (
            "      - match: { path_regex: '(' }\n",
            "services.orders.routes[0].match.path_regex",
        ),
        (
            "      - match: { path_prefix: / }\n        backends: { v9: 1 }\n",
            "services.orders.routes[0].backends.v9: unknown service `v9`",
        ),
        (
            "      - match: { path_prefix: / }\n        backends: { v1: 0, v2: 0 }\n",
            "services.orders.routes[0].backends: every backend weight is 0",
        ),
        (
            "      - match: { headers: { x-a: { exact: a, present: true } } }\n        name: a\n",
            "services.orders.routes[0].match.headers.x-a: a header condition is exactly one",
        ),
        (
            "      - match: { path: /a, path_prefix: /b }\n",
            "services.orders.routes[0].match: a route matches on at most one",
        ),
        (
            "      - match: { path_prefix: / }\n        respond: { status: 200 }\n        backends: { v1: 1 }\n",
            "services.orders.routes[0].backends: a route that answers itself",
        ),
        (
            "      - match: { method: GET }\n",
            "services.orders.routes[0]: a route without a path match needs a `name`",
        ),
    ];
    for (routes, expected) in cases {
        let error = remora::build::parse("test.yaml", &front_config(routes, &backends))
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{routes}: {error}");
        assert!(error.starts_with("test.yaml:"), "located: {error}");
    }
}

#[tokio::test]
async fn a_mirrored_call_says_so_on_its_span() {
    let (collector, received) = otlp_receiver::grpc().await;
    let (v1, _) = recording("v1").await;
    let (shadow, copies) = recording("shadow").await;
    let routes = "      - match: { path_prefix: / }\n        mirror: { service: shadow }\n";
    let config = remora::build::parse(
        "test.yaml",
        &front_config(routes, &[("v1", v1), ("shadow", shadow)]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tracing = remora::trace::TracingConfig {
        endpoint: Some(format!("http://{collector}")),
        service_name: "routing".into(),
        batch_delay: Duration::from_millis(50),
        ..Default::default()
    };
    let proxy = remora::Sidecar::start_with(config, tracing).await.unwrap();
    assert_eq!(call(&url(&proxy, "/traced"), &[]).await.0, 200);
    assert!(eventually(Duration::from_secs(5), || async { copies.len() == 1 }).await);
    proxy.handle().tracing().flush().await;
    let spans = received.wait_for(1, Duration::from_secs(5)).await;
    let events: Vec<String> = spans.iter().flat_map(|s| s.events.clone()).collect();
    assert!(events.iter().any(|e| e == "mirrored"), "{events:?}");
}
