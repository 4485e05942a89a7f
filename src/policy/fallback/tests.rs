//! The fallback layer driven by programmed inner services.

use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{header, HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use super::*;
use crate::policy::test_support::{proxied, status, Outcome, Read, Upstream};

fn grpc_answer(code: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    response
        .headers_mut()
        .insert("grpc-status", HeaderValue::from_static(code));
    response
}

fn upstream_error() -> ProxyError {
    ProxyError::Upstream {
        endpoint: "10.0.0.1:80".into(),
        source: "reset".into(),
    }
}

/// Every trigger, and an outcome that fires it.
fn firing_outcomes() -> Vec<(Trigger, fn() -> Outcome)> {
    vec![
        (Trigger::BreakerOpen, || {
            Err(ProxyError::BreakerOpen("s".into()))
        }),
        (Trigger::Timeout, || {
            Err(ProxyError::Timeout(Duration::from_secs(1)))
        }),
        (Trigger::RateLimited, || {
            Err(ProxyError::RateLimited {
                retry_after: Duration::from_secs(1),
            })
        }),
        (Trigger::NoEndpoint, || {
            Err(ProxyError::NoHealthyEndpoint("s".into()))
        }),
        (Trigger::Overloaded, || {
            Err(ProxyError::Overloaded("s".into()))
        }),
        (Trigger::ConnectFailure, || {
            Err(ProxyError::Connect {
                endpoint: "10.0.0.1:80".into(),
                source: "refused".into(),
                unsent: None,
            })
        }),
        (Trigger::Upstream5xx, || status(503)),
        (Trigger::UpstreamReset, || Err(upstream_error())),
        (Trigger::GrpcCodes(vec![tonic::Code::Unavailable]), || {
            Ok(grpc_answer("14"))
        }),
    ]
}

fn degraded() -> StaticResponse {
    StaticResponse::try_new(
        StatusCode::OK,
        HeaderMap::new(),
        Bytes::from_static(b"degraded"),
        None,
    )
    .unwrap()
}

fn layer(on: Vec<Trigger>, action: FallbackAction) -> (FallbackLayer, FallbackMetrics) {
    let metrics = FallbackMetrics::register(&mut prometheus_client::registry::Registry::default());
    let config = FallbackConfig::try_new(on.into_iter().collect(), action).unwrap();
    (
        FallbackLayer::new(Arc::from("svc"), config, metrics.clone()),
        metrics,
    )
}

fn served(metrics: &FallbackMetrics, trigger: &'static str, action: &'static str) -> u64 {
    metrics
        .served
        .get_or_create(&FallbackLabels {
            service: ServiceLabel(Arc::from("svc")),
            trigger,
            action,
        })
        .get()
}

fn unserved(metrics: &FallbackMetrics, action: &'static str) -> u64 {
    metrics
        .unserved
        .get_or_create(&UnservedLabels {
            service: ServiceLabel(Arc::from("svc")),
            action,
        })
        .get()
}

/// An inner service answering every call with `outcome()`, leaving bodies unread.
fn answering(outcome: fn() -> Outcome) -> Upstream {
    Upstream::answering(move |_| outcome().into()).reading(Read::Nothing)
}

fn get(path: &str) -> Request<ProxyBody> {
    proxied(
        Request::get(path)
            .header(header::HOST, "svc")
            .body(ProxyBody::empty())
            .unwrap(),
    )
}

/// The error of an outcome that must have failed.
fn expect_err(result: Outcome) -> ProxyError {
    match result {
        Ok(response) => panic!("expected an error, got {}", response.status()),
        Err(error) => error,
    }
}

async fn body_of(response: Response<ProxyBody>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn each_trigger_serves_the_fallback_with_its_name() {
    for (trigger, outcome) in firing_outcomes() {
        let kind = trigger.kind();
        let (layer, metrics) = layer(vec![trigger], FallbackAction::Respond(degraded()));
        let response = layer
            .layer(answering(outcome))
            .oneshot(get("/"))
            .await
            .unwrap_or_else(|error| panic!("{kind:?} was not replaced: {error}"));
        assert_eq!(response.status(), StatusCode::OK, "{kind:?}");
        assert_eq!(response.headers()[&FALLBACK_HEADER], kind.as_str());
        assert_eq!(body_of(response).await, "degraded");
        assert_eq!(served(&metrics, kind.as_str(), "respond"), 1, "{kind:?}");
    }
}

#[tokio::test]
async fn outcomes_not_listed_pass_through() {
    let (layer, metrics) = layer(vec![Trigger::Timeout], FallbackAction::Respond(degraded()));
    for (trigger, outcome) in firing_outcomes() {
        if trigger.kind() == TriggerKind::Timeout {
            continue;
        }
        let result = layer.layer(answering(outcome)).oneshot(get("/")).await;
        match (outcome(), result) {
            (Err(expected), Err(got)) => assert_eq!(got.reason(), expected.reason()),
            (Ok(expected), Ok(got)) => {
                assert_eq!(got.status(), expected.status());
                assert!(!got.headers().contains_key(&FALLBACK_HEADER));
            }
            (expected, got) => panic!(
                "{:?} became {:?}",
                expected.map(|r| r.status()),
                got.map(|r| r.status())
            ),
        }
    }
    let ok = layer
        .layer(answering(|| status(200)))
        .oneshot(get("/"))
        .await
        .unwrap();
    assert_eq!(body_of(ok).await, "upstream");
    assert_eq!(served(&metrics, "timeout", "respond"), 0);
}

#[tokio::test]
async fn grpc_codes_not_listed_pass_through() {
    let (layer, _) = layer(
        vec![Trigger::GrpcCodes(vec![tonic::Code::Unavailable])],
        FallbackAction::Respond(degraded()),
    );
    let response = layer
        .layer(answering(|| Ok(grpc_answer("5"))))
        .oneshot(get("/"))
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "5");
    assert!(!response.headers().contains_key(&FALLBACK_HEADER));
}

#[test]
fn nonsense_configs_are_refused() {
    let respond = || FallbackAction::Respond(degraded());
    let error = FallbackConfig::try_new(Triggers::default(), respond()).unwrap_err();
    assert!(
        error.to_string().contains("at least one trigger"),
        "{error}"
    );
    let no_codes = [Trigger::GrpcCodes(vec![])].into_iter().collect();
    assert!(FallbackConfig::try_new(no_codes, respond()).is_err());
    let ok_code = [Trigger::GrpcCodes(vec![tonic::Code::Ok])]
        .into_iter()
        .collect();
    assert!(FallbackConfig::try_new(ok_code, respond()).is_err());
}

fn grpc_request() -> Request<ProxyBody> {
    proxied(
        Request::post("/pkg.Svc/Get")
            .header(header::CONTENT_TYPE, "application/grpc+proto")
            .body(ProxyBody::full(vec![0u8, 0, 0, 0, 0]))
            .unwrap(),
    )
}

#[tokio::test]
async fn grpc_callers_get_a_trailers_only_status() {
    let reply = StaticResponse::try_new(
        StatusCode::OK,
        HeaderMap::new(),
        Bytes::from_static(b"degraded"),
        Some(GrpcReply::Status {
            code: tonic::Code::Unavailable,
            message: "degraded: 100%".into(),
        }),
    )
    .unwrap();
    let (layer, _) = layer(vec![Trigger::BreakerOpen], FallbackAction::Respond(reply));
    let response = layer
        .layer(answering(|| Err(ProxyError::BreakerOpen("s".into()))))
        .oneshot(grpc_request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(response.headers()["grpc-message"], "degraded: 100%25");
    assert_eq!(response.headers()[&FALLBACK_HEADER], "breaker_open");
    assert!(response.body().is_end_stream(), "trailers-only has no body");
}

#[tokio::test]
async fn grpc_callers_get_a_framed_message_then_status_ok() {
    let message = Bytes::from_static(b"\x08\x2a"); // field 1 = 42
    let reply = StaticResponse::try_new(
        StatusCode::OK,
        HeaderMap::new(),
        Bytes::new(),
        Some(GrpcReply::Message(message.clone())),
    )
    .unwrap();
    let (layer, _) = layer(vec![Trigger::Timeout], FallbackAction::Respond(reply));
    let response = layer
        .layer(answering(|| {
            Err(ProxyError::Timeout(Duration::from_secs(1)))
        }))
        .oneshot(grpc_request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
    assert!(!response.headers().contains_key("grpc-status"));
    assert_eq!(response.headers()[&FALLBACK_HEADER], "timeout");

    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    let mut frame = collected.to_bytes();
    assert_eq!(frame.get_u8(), 0, "not compressed");
    let length = frame.get_u32() as usize;
    assert_eq!(length, message.len());
    assert_eq!(frame, message);
}

/// An alternate stack that reads its requests whole and answers 200 "alternate".
fn alternate() -> (ServiceStack, Upstream) {
    let upstream = Upstream::answering(|_| Ok(Response::new(ProxyBody::full("alternate"))).into());
    (BoxCloneSyncService::new(upstream.clone()), upstream)
}

/// (method, target, body) of each request `upstream` saw.
fn requests(upstream: &Upstream) -> Vec<(Method, String, Bytes)> {
    upstream
        .seen()
        .into_iter()
        .map(|s| (s.method, s.uri.to_string(), s.body))
        .collect()
}

/// A primary that reads the whole request body, then fails with a reset.
fn reading_then_resetting() -> Upstream {
    Upstream::answering(|_| Err(upstream_error()).into())
}

fn post(body: impl Into<Bytes>) -> Request<ProxyBody> {
    proxied(
        Request::post("/orders?x=1")
            .body(ProxyBody::full(body.into()))
            .unwrap(),
    )
}

#[tokio::test]
async fn forward_sends_the_same_request_to_the_alternate() {
    let (stack, seen) = alternate();
    let (layer, metrics) = layer(
        vec![Trigger::UpstreamReset],
        FallbackAction::ForwardTo(stack),
    );
    let primary = reading_then_resetting();
    let response = layer
        .layer(primary.clone())
        .oneshot(post("payload"))
        .await
        .unwrap();
    assert_eq!(
        primary.seen()[0].body,
        "payload",
        "the primary read the body"
    );
    assert_eq!(response.headers()[&FALLBACK_HEADER], "reset");
    assert_eq!(body_of(response).await, "alternate");
    assert_eq!(
        requests(&seen),
        [(
            Method::POST,
            "/orders?x=1".into(),
            Bytes::from_static(b"payload")
        )]
    );
    assert_eq!(served(&metrics, "reset", "forward"), 1);
}

#[tokio::test]
async fn forward_of_a_get_on_5xx() {
    let (stack, seen) = alternate();
    let (layer, _) = layer(vec![Trigger::Upstream5xx], FallbackAction::ForwardTo(stack));
    let response = layer
        .layer(answering(|| status(502)))
        .oneshot(get("/items"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[&FALLBACK_HEADER], "5xx");
    assert_eq!(
        requests(&seen),
        [(Method::GET, "/items".into(), Bytes::new())]
    );
}

#[tokio::test]
async fn a_large_body_read_by_the_primary_is_not_forwarded() {
    let (stack, seen) = alternate();
    let (layer, metrics) = layer(
        vec![Trigger::UpstreamReset],
        FallbackAction::ForwardTo(stack),
    );
    let primary = reading_then_resetting();
    let error = expect_err(
        layer
            .layer(primary.clone())
            .oneshot(post(vec![b'x'; 100 * 1024]))
            .await,
    );
    assert_eq!(error.reason(), "upstream-reset", "the original outcome");
    assert_eq!(primary.seen()[0].body.len(), 100 * 1024);
    assert_eq!(seen.calls(), 0, "alternate was called");
    assert_eq!(unserved(&metrics, "forward"), 1);
}

#[tokio::test]
async fn a_large_body_the_primary_never_read_is_forwarded_whole() {
    let (stack, seen) = alternate();
    let (layer, _) = layer(vec![Trigger::BreakerOpen], FallbackAction::ForwardTo(stack));
    let response = layer
        .layer(answering(|| Err(ProxyError::BreakerOpen("s".into()))))
        .oneshot(post(vec![b'x'; 100 * 1024]))
        .await
        .unwrap();
    assert_eq!(response.headers()[&FALLBACK_HEADER], "breaker_open");
    assert_eq!(seen.seen()[0].body.len(), 100 * 1024);
}

#[tokio::test]
async fn a_failing_alternate_leaves_the_original_outcome() {
    let failing: ServiceStack = BoxCloneSyncService::new(answering(|| {
        Err(ProxyError::NoHealthyEndpoint("alt".into()))
    }));
    let (layer, metrics) = layer(vec![Trigger::Timeout], FallbackAction::ForwardTo(failing));
    let error = expect_err(
        layer
            .layer(answering(|| {
                Err(ProxyError::Timeout(Duration::from_secs(1)))
            }))
            .oneshot(get("/"))
            .await,
    );
    assert_eq!(error.reason(), "timeout");
    assert_eq!(unserved(&metrics, "forward"), 1);
}

/// A primary that answers `body` (version v1), until it is told to fail.
fn serving(body: &'static [u8]) -> Upstream {
    Upstream::answering(move |_| {
        let mut response = Response::new(ProxyBody::full(body));
        response
            .headers_mut()
            .insert("x-version", HeaderValue::from_static("v1"));
        Ok(response).into()
    })
}

/// Makes `primary` time out from now on.
fn fail(primary: &Upstream) {
    primary.answer_with(|_| Err(ProxyError::Timeout(Duration::from_secs(1))).into());
}

fn stale_layer(
    max_entries: usize,
    max_body_bytes: usize,
) -> (FallbackLayer, FallbackMetrics, StaleCache) {
    let cache = StaleCache::try_new(max_entries, max_body_bytes, Duration::from_secs(30)).unwrap();
    let (layer, metrics) = layer(vec![Trigger::Timeout], FallbackAction::Stale(cache.clone()));
    (layer, metrics, cache)
}

#[tokio::test(start_paused = true)]
async fn stale_serves_the_last_good_answer_while_fresh() {
    let (layer, metrics, cache) = stale_layer(8, 1024);
    let primary = serving(b"catalog");
    let service = layer.layer(primary.clone());

    let response = service.clone().oneshot(get("/items?page=1")).await.unwrap();
    assert!(cache.is_empty(), "stored before its body was sent");
    assert_eq!(body_of(response).await, "catalog");
    assert_eq!(cache.len(), 1);

    fail(&primary);
    tokio::time::advance(Duration::from_secs(10)).await;
    let response = service.clone().oneshot(get("/items?page=1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[&FALLBACK_HEADER], "timeout");
    assert_eq!(response.headers()["x-version"], "v1");
    assert_eq!(response.headers()[header::AGE], "10");
    assert_eq!(body_of(response).await, "catalog");
    assert_eq!(served(&metrics, "timeout", "stale"), 1);

    let other = expect_err(service.clone().oneshot(get("/items?page=2")).await);
    assert_eq!(
        other.reason(),
        "timeout",
        "a miss keeps the original outcome"
    );
    assert_eq!(unserved(&metrics, "stale"), 1);

    tokio::time::advance(Duration::from_secs(21)).await;
    let expired = expect_err(service.clone().oneshot(get("/items?page=1")).await);
    assert_eq!(expired.reason(), "timeout", "an expired answer was served");
    assert_eq!(unserved(&metrics, "stale"), 2);
    assert!(cache.is_empty(), "the expired answer is dropped");
}

#[tokio::test]
async fn stale_does_not_keep_oversized_answers() {
    let (layer, metrics, cache) = stale_layer(8, 4);
    let primary = serving(b"too large");
    let service = layer.layer(primary.clone());
    let response = service.clone().oneshot(get("/big")).await.unwrap();
    assert_eq!(body_of(response).await, "too large", "still sent whole");
    assert!(cache.is_empty());

    fail(&primary);
    let error = expect_err(service.oneshot(get("/big")).await);
    assert_eq!(error.reason(), "timeout");
    assert_eq!(unserved(&metrics, "stale"), 1);
}

#[tokio::test]
async fn stale_keeps_at_most_max_entries() {
    let (layer, _, cache) = stale_layer(3, 1024);
    let service = layer.layer(serving(b"x"));
    for page in 0..10 {
        let response = service
            .clone()
            .oneshot(get(&format!("/p/{page}")))
            .await
            .unwrap();
        body_of(response).await;
    }
    assert_eq!(cache.len(), 3);
}

#[tokio::test]
async fn stale_ignores_other_methods() {
    let (layer, metrics, cache) = stale_layer(8, 1024);
    let primary = serving(b"created");
    let service = layer.layer(primary.clone());
    let response = service.clone().oneshot(post("a")).await.unwrap();
    body_of(response).await;
    assert!(cache.is_empty(), "a POST answer was recorded");
    fail(&primary);
    let error = expect_err(service.oneshot(post("a")).await);
    assert_eq!(error.reason(), "timeout");
    assert_eq!(unserved(&metrics, "stale"), 0, "a POST is not a stale miss");
}
