//! Retry driven by programmed inner services: what each attempt carries, when calls are
//! retried, how long they wait, and what bodies are replayed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::metrics::{AttemptLabels, FirstOrRetry};
use super::service::attempt_value;
use super::{RetryConfig, RetryLayer, RetryMetrics, ATTEMPT_HEADER};
use crate::core::body::{BoxError, ProxyBody};
use crate::core::call::{AvoidEndpoints, CallInfo, EndpointUsed};
use crate::core::error::ProxyError;
use crate::core::grpc::GRPC_TIMEOUT;
use crate::core::labels::{ByService, PerService, ServiceLabel};
use crate::core::outcome::Conditions;
use crate::policy::backoff::RetryBackoff;
use crate::policy::budget::RetryBudget;
use crate::policy::test_support::{
    proxied, proxied_from, status, with_header, Read, Reply, Upstream,
};
use crate::policy::timeout::{TimeoutConfig, TimeoutKind, TimeoutLayer, TimeoutMetrics};

const MS: Duration = Duration::from_millis(1);

fn gateway_errors() -> Conditions {
    Conditions {
        gateway_error: true,
        timeout: true,
        connect_failure: true,
        grpc_codes: vec![tonic::Code::Unavailable],
        ..Default::default()
    }
}

fn config(max_attempts: u32) -> RetryConfig {
    let backoff = RetryBackoff::try_new(10 * MS, Duration::from_secs(5), 0.0).unwrap();
    let budget = RetryBudget::try_new(0.2, 100, Duration::from_secs(10)).unwrap();
    RetryConfig::try_new(max_attempts, gateway_errors(), backoff, Arc::new(budget)).unwrap()
}

fn layer(config: RetryConfig) -> (RetryLayer, RetryMetrics) {
    let metrics = RetryMetrics::default();
    (
        RetryLayer::new(config, "svc".into(), metrics.clone()),
        metrics,
    )
}

fn counter(family: &PerService<Counter>) -> u64 {
    family.get_or_create(&ByService::of(&"svc".into())).get()
}

fn attempts(metrics: &RetryMetrics, attempt: FirstOrRetry) -> u64 {
    metrics
        .attempts
        .get_or_create(&AttemptLabels {
            service: ServiceLabel("svc".into()),
            attempt,
        })
        .get()
}

fn get() -> Request<ProxyBody> {
    proxied(
        Request::get("http://svc/x")
            .body(ProxyBody::empty())
            .unwrap(),
    )
}

/// A proxied `method` call to `http://svc/x` with `body`.
fn with_body(method: Method, body: ProxyBody) -> Request<ProxyBody> {
    proxied(
        Request::builder()
            .method(method)
            .uri("http://svc/x")
            .body(body)
            .unwrap(),
    )
}

/// The attempt numbers the upstream saw.
fn attempts_seen(upstream: &Upstream) -> Vec<String> {
    upstream.header_of_each(ATTEMPT_HEADER.as_str())
}

/// When each attempt was made, from `started`.
fn times(upstream: &Upstream, started: Instant) -> Vec<Duration> {
    upstream.seen().iter().map(|s| s.at - started).collect()
}

/// Fails attempts before the `n`-th with 503, then answers 200.
fn ok_from(n: usize) -> Upstream {
    Upstream::answering(move |k| if k < n { status(503) } else { status(200) }.into())
}

fn always(code: u16) -> Upstream {
    Upstream::answering(move |_| status(code).into())
}

#[tokio::test(start_paused = true)]
async fn flaky_upstream_succeeds_on_third_attempt() {
    let upstream = ok_from(3);
    let (layer, metrics) = layer(config(3));
    let started = Instant::now();
    let response = layer.layer(upstream.clone()).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts_seen(&upstream), ["1", "2", "3"]);
    // Backoff 10 ms, then 20 ms.
    assert_eq!(
        times(&upstream, started),
        [Duration::ZERO, 10 * MS, 30 * MS]
    );
    assert_eq!(attempts(&metrics, FirstOrRetry::First), 1);
    assert_eq!(attempts(&metrics, FirstOrRetry::Retry), 2);
    assert_eq!(counter(&metrics.retries), 2);
}

/// A marker extension that is not remora's own.
#[derive(Debug, Clone, PartialEq)]
struct Foreign(u32);

#[tokio::test(start_paused = true)]
async fn every_attempt_carries_the_request_extensions() {
    for foreign in [None, Some(Foreign(7))] {
        let upstream = ok_from(3);
        let (layer, _) = layer(config(3));
        let mut request = proxied_from("192.0.2.7:4000".parse().unwrap(), get());
        // As the timeout layer above sets it.
        let deadline = Instant::now() + Duration::from_secs(60);
        request
            .extensions_mut()
            .get_mut::<CallInfo>()
            .unwrap()
            .deadline = Some(deadline);
        let call = request.extensions().get::<CallInfo>().unwrap().clone();
        if let Some(foreign) = foreign.clone() {
            request.extensions_mut().insert(foreign);
        }
        let response = layer
            .layer(upstream.clone())
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let seen = upstream.seen();
        assert_eq!(seen.len(), 3);
        for attempt in &seen {
            let extensions = &attempt.extensions;
            let carried = extensions.get::<CallInfo>().unwrap();
            assert_eq!(
                (carried.client, carried.arrived, carried.deadline),
                (call.client, call.arrived, Some(deadline))
            );
            assert_eq!(extensions.get::<Foreign>(), foreign.as_ref());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_result() {
    let upstream = always(503);
    let (layer, metrics) = layer(config(2));
    let response = layer.layer(upstream.clone()).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts_seen(&upstream), ["1", "2"]);
    assert_eq!(counter(&metrics.retries), 1);
    assert_eq!(counter(&metrics.budget_exhausted), 0);
}

#[tokio::test(start_paused = true)]
async fn unmatched_results_are_not_retried() {
    let upstream = always(500);
    let (layer, _) = layer(config(3));
    let response = layer.layer(upstream.clone()).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(attempts_seen(&upstream), ["1"]);
}

#[tokio::test(start_paused = true)]
async fn next_attempt_avoids_failed_endpoints() {
    let first: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let second: SocketAddr = "10.0.0.2:80".parse().unwrap();
    let upstream = Upstream::answering(move |n| {
        match n {
            1 => Err(ProxyError::Connect {
                endpoint: first.to_string(),
                source: "refused".into(),
                unsent: None,
            }),
            2 => status(503).map(|mut response| {
                response
                    .extensions_mut()
                    .insert(EndpointUsed(second, std::time::Duration::ZERO));
                response
            }),
            _ => status(200),
        }
        .into()
    });
    let (layer, _) = layer(config(3));
    let response = layer.layer(upstream.clone()).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let avoid: Vec<_> = upstream
        .seen()
        .iter()
        .map(|s| {
            s.extensions
                .get::<AvoidEndpoints>()
                .map(|a| a.0.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(avoid, [vec![], vec![first], vec![first, second]]);
}

/// Refuses the first connection (giving the request back unsent), then answers 200.
fn refusing_once() -> Upstream {
    Upstream::answering(|n| match n {
        1 => Reply::Refused,
        _ => status(200).into(),
    })
}

#[tokio::test(start_paused = true)]
async fn a_failed_connection_gives_the_unsent_request_back_for_the_next_attempt() {
    let upstream = refusing_once();
    let (retry, metrics) = layer(config(3));
    let post = with_body(Method::POST, ProxyBody::full("order"));
    let response = retry.layer(upstream.clone()).oneshot(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts_seen(&upstream), ["1", "2"]);
    assert_eq!(
        upstream.seen()[1].body,
        "order",
        "the same request, body untouched, sent again"
    );
    assert_eq!(counter(&metrics.retries), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_given_back_unsent_is_sent_whole_by_the_retry() {
    let upstream = refusing_once();
    let (retry, _) = layer(config(3));
    let put = with_body(Method::PUT, ProxyBody::full("payload"));
    let response = retry.layer(upstream.clone()).oneshot(put).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bodies: Vec<_> = upstream.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, [Bytes::new(), Bytes::from("payload")]);
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_when_allowed() {
    let post = || with_body(Method::POST, ProxyBody::full("order"));
    let upstream = always(503);
    let (retry, _) = layer(config(3));
    let response = retry.layer(upstream.clone()).oneshot(post()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts_seen(&upstream), ["1"]);

    let upstream = always(503);
    let (retry, _) = layer(config(3).with_retry_non_idempotent(true));
    retry.layer(upstream.clone()).oneshot(post()).await.unwrap();
    assert_eq!(attempts_seen(&upstream), ["1", "2", "3"]);
    let bodies: Vec<_> = upstream.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, ["order", "order", "order"]);
}

#[tokio::test(start_paused = true)]
async fn large_whole_body_is_sent_once() {
    let payload = Bytes::from(vec![7u8; 100 * 1024]);
    let upstream = always(503);
    let (retry, metrics) = layer(config(3));
    let request = with_body(Method::PUT, ProxyBody::full(payload.clone()));
    let response = retry
        .layer(upstream.clone())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts_seen(&upstream), ["1"]);
    assert_eq!(upstream.seen()[0].body, payload);
    assert_eq!(counter(&metrics.not_replayable), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_the_failed_attempt_still_holds_is_not_sent_again() {
    // The upstream answers 503 after the first frame, while its connection still holds
    // the rest of the body (the client has not finished sending it).
    let upstream = always(503).reading(Read::First);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
        .await
        .unwrap();
    let body = ProxyBody::boxed(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let request = with_body(Method::PUT, body);
    let (retry, metrics) = layer(config(3));
    let response = retry
        .layer(upstream.clone())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts_seen(&upstream), ["1"]);
    assert_eq!(counter(&metrics.not_replayable), 1);
    assert_eq!(
        counter(&metrics.retries),
        0,
        "nothing withdrawn from the budget"
    );
    drop(tx);
}

/// Sends `frames` as a chunked HTTP/1.1 PUT through a real hyper connection to a
/// server running `service`, so that it sees a streamed `Incoming` body of unknown
/// length. `keep_open` leaves the request body unfinished after the frames.
async fn through_hyper<S>(
    service: S,
    content_type: &'static str,
    frames: Vec<Bytes>,
    keep_open: bool,
) -> StatusCode
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let server = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let service = service.clone();
        async move {
            let result = service
                .oneshot(proxied(request.map(ProxyBody::streamed)))
                .await;
            Ok::<_, Infallible>(result.unwrap_or_else(|e| e.to_response(false)))
        }
    });
    tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), server),
    );
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap();
    tokio::spawn(connection);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    for frame in frames {
        tx.send(frame).await.unwrap();
    }
    if !keep_open {
        drop(tx);
    } else {
        std::mem::forget(tx);
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let frame = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(frame)), rx))
    });
    let request = Request::put("http://svc/x")
        .header(http::header::CONTENT_TYPE, content_type)
        .body(http_body_util::StreamBody::new(stream))
        .unwrap();
    sender.send_request(request).await.unwrap().status()
}

fn chunks(total: usize, chunk: usize) -> (Bytes, Vec<Bytes>) {
    let whole: Bytes = (0..total).map(|i| (i % 251) as u8).collect();
    let frames = (0..total)
        .step_by(chunk)
        .map(|at| whole.slice(at..(at + chunk).min(total)))
        .collect();
    (whole, frames)
}

#[tokio::test(start_paused = true)]
async fn small_chunked_body_is_replayed_byte_identical() {
    let (whole, frames) = chunks(10 * 1024, 1000);
    let upstream = ok_from(3);
    let (retry, _) = layer(config(3));
    let status = through_hyper(
        retry.layer(upstream.clone()),
        "application/octet-stream",
        frames,
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    for attempt in &seen {
        assert_eq!(attempt.body, whole);
    }
}

#[tokio::test(start_paused = true)]
async fn large_chunked_body_is_sent_once_and_whole() {
    let (whole, frames) = chunks(100 * 1024, 4096);
    let upstream = always(503);
    let (retry, metrics) = layer(config(3));
    let status = through_hyper(
        retry.layer(upstream.clone()),
        "application/octet-stream",
        frames,
        false,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts_seen(&upstream), ["1"]);
    assert_eq!(upstream.seen()[0].body, whole);
    assert_eq!(counter(&metrics.not_replayable), 1);
}

#[tokio::test(start_paused = true)]
async fn open_grpc_stream_is_forwarded_without_waiting_for_its_end() {
    // One whole gRPC message (5-byte prefix + 3 bytes); the client keeps streaming.
    let message = Bytes::from_static(&[0, 0, 0, 0, 3, b'a', b'b', b'c']);
    let upstream = Upstream::ok().reading(Read::First);
    let (retry, _) = layer(config(3));
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        through_hyper(
            retry.layer(upstream.clone()),
            "application/grpc",
            vec![message.clone()],
            true,
        ),
    )
    .await
    .expect("the call must not wait for the request stream to end");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.seen()[0].body, message);
}

#[tokio::test(start_paused = true)]
async fn budget_stops_a_retry_storm() {
    // 100 calls deposit 0.1 × 100 = 10 retries (no floor); every attempt fails.
    let upstream = always(503).after(|_| MS);
    let backoff = RetryBackoff::try_new(10 * MS, Duration::from_secs(1), 0.0).unwrap();
    let budget = RetryBudget::try_new(0.1, 0, Duration::from_secs(10)).unwrap();
    let config = RetryConfig::try_new(3, gateway_errors(), backoff, Arc::new(budget)).unwrap();
    let (retry, metrics) = layer(config);
    let service = retry.layer(upstream.clone());
    let calls = (0..100).map(|_| service.clone().oneshot(get()));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().status() == 503));
    assert_eq!(upstream.calls(), 110);
    assert_eq!(counter(&metrics.retries), 10);
    // 90 refused after a first attempt, 10 after their retry.
    assert_eq!(counter(&metrics.budget_exhausted), 100);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_capped() {
    let upstream = Upstream::answering(|n| {
        match n {
            1 => with_header(status(503), "retry-after", "2"),
            2 => with_header(status(503), "retry-after", "3600"),
            _ => status(200),
        }
        .into()
    });
    let (retry, _) = layer(config(3));
    let started = Instant::now();
    retry.layer(upstream.clone()).oneshot(get()).await.unwrap();
    // 2 s as asked, then 1 h capped at the backoff maximum (5 s).
    assert_eq!(
        times(&upstream, started),
        [Duration::ZERO, 2000 * MS, 7000 * MS]
    );
}

fn grpc_unavailable(pushback: &'static str) -> Reply {
    let response = with_header(status(200), "grpc-status", "14");
    with_header(response, "grpc-retry-pushback-ms", pushback).into()
}

#[tokio::test(start_paused = true)]
async fn grpc_pushback_is_honoured_and_negative_stops_retries() {
    let upstream = Upstream::answering(|n| match n {
        1 => grpc_unavailable("300"),
        _ => status(200).into(),
    });
    let (retry, _) = layer(config(3));
    let started = Instant::now();
    retry.layer(upstream.clone()).oneshot(get()).await.unwrap();
    assert_eq!(times(&upstream, started), [Duration::ZERO, 300 * MS]);

    for refusal in ["-1", "soon"] {
        let upstream = Upstream::answering(move |_| grpc_unavailable(refusal));
        let (retry, metrics) = layer(config(3));
        let response = retry.layer(upstream.clone()).oneshot(get()).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(attempts_seen(&upstream), ["1"], "pushback {refusal}");
        assert_eq!(counter(&metrics.retries), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_triggers_a_retry() {
    let upstream = Upstream::ok().after(|n| {
        if n == 1 {
            Duration::from_secs(10)
        } else {
            5 * MS
        }
    });
    let config = config(3).with_per_try_timeout(Some(100 * MS)).unwrap();
    let timeouts = TimeoutMetrics::default();
    let (retry, _) = layer(config);
    let retry = retry.with_timeout_metrics(timeouts.clone());
    let started = Instant::now();
    let response = retry.layer(upstream.clone()).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts_seen(&upstream), ["1", "2"]);
    // 100 ms per-try timeout, 10 ms backoff, 5 ms answer.
    assert_eq!(started.elapsed(), 115 * MS);
    assert_eq!(timeouts.count("svc", TimeoutKind::PerTry), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_sent_once_is_still_bounded_by_the_per_try_timeout() {
    let upstream = Upstream::ok().after(|_| Duration::from_secs(10));
    let config = config(1).with_per_try_timeout(Some(100 * MS)).unwrap();
    let (retry, _) = layer(config);
    let started = Instant::now();
    let result = retry.layer(upstream.clone()).oneshot(get()).await;
    assert!(matches!(result, Err(ProxyError::Timeout(d)) if d == 100 * MS));
    assert_eq!(started.elapsed(), 100 * MS);
    assert_eq!(attempts_seen(&upstream), ["1"]);
}

#[tokio::test(start_paused = true)]
async fn overall_timeout_bounds_all_attempts() {
    let upstream = always(503).after(|_| 45 * MS);
    let (retry, _) = layer(config(100));
    let timeout = TimeoutLayer::new(
        TimeoutConfig::try_new(Some(Duration::from_millis(150))).unwrap(),
        "svc".into(),
        TimeoutMetrics::default(),
    );
    let service = timeout.layer(retry.layer(upstream.clone()));
    let started = Instant::now();
    let result = service.oneshot(get()).await;
    assert!(matches!(result, Err(ProxyError::Timeout(d)) if d == 150 * MS));
    assert_eq!(started.elapsed(), 150 * MS);
    // Attempts at 0, 55 (45 + 10) and 120 (100 + 20) ms; the deadline cuts the third.
    assert_eq!(attempts_seen(&upstream), ["1", "2", "3"]);
}

#[tokio::test(start_paused = true)]
async fn propagated_grpc_timeout_decreases_by_elapsed_time() {
    let upstream = ok_from(2).after(|n| if n == 1 { 200 * MS } else { Duration::ZERO });
    // gRPC calls are POSTs: retried only when the config allows any method.
    let (retry, _) = layer(config(3).with_retry_non_idempotent(true));
    let timeout = TimeoutLayer::new(
        TimeoutConfig::default(),
        "svc".into(),
        TimeoutMetrics::default(),
    );
    let service = timeout.layer(retry.layer(upstream.clone()));
    let request = Request::post("http://svc/pkg.Svc/Get")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(&GRPC_TIMEOUT, "1S")
        .body(ProxyBody::empty())
        .unwrap();
    let response = service.oneshot(proxied(request)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // 200 ms for the first attempt, 10 ms backoff.
    assert_eq!(
        upstream.header_of_each(GRPC_TIMEOUT.as_str()),
        ["1S", "790m"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_grpc_timeout_on_a_call_that_is_not_grpc_is_passed_on_untouched() {
    let upstream = ok_from(2).after(|n| if n == 1 { 200 * MS } else { Duration::ZERO });
    let (retry, _) = layer(config(3));
    let timeout = TimeoutLayer::new(
        TimeoutConfig::default(),
        "svc".into(),
        TimeoutMetrics::default(),
    );
    let service = timeout.layer(retry.layer(upstream.clone()));
    let mut request = get();
    request
        .headers_mut()
        .insert(&GRPC_TIMEOUT, HeaderValue::from_static("1S"));
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.header_of_each(GRPC_TIMEOUT.as_str()), ["1S", "1S"]);
}

#[test]
fn rejects_nonsense() {
    let budget = Arc::new(RetryBudget::default());
    let err = RetryConfig::try_new(0, Conditions::default(), RetryBackoff::default(), budget)
        .unwrap_err();
    assert!(err.to_string().contains("max_attempts must be at least 1"));
    assert!(config(2)
        .with_per_try_timeout(Some(Duration::ZERO))
        .is_err());
    assert!(config(2).with_max_replay_bytes(1 << 30).is_err());
}

#[test]
fn attempt_values_are_the_numbers() {
    for n in [1, 2, 9, 10, 11, 123, u32::MAX] {
        assert_eq!(attempt_value(n), HeaderValue::from(n));
    }
}
