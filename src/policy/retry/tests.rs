//! Retry driven by programmed inner services: what each attempt carries, when calls are
//! retried, how long they wait, and what bodies are replayed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

use super::metrics::{AttemptKind, AttemptLabels};
use super::service::attempt_value;
use super::{RetryConfig, RetryLayer, RetryMetrics, ATTEMPT_HEADER};
use crate::core::body::ProxyBody;
use crate::core::call::{AvoidEndpoints, CallInfo, Deadline, EndpointUsed};
use crate::core::error::{ProxyError, Unsent};
use crate::core::grpc::GRPC_TIMEOUT;
use crate::core::labels::{ByService, PerService, ServiceLabel};
use crate::core::outcome::Conditions;
use crate::policy::backoff::Backoff;
use crate::policy::budget::RetryBudget;
use crate::policy::timeout::{TimeoutConfig, TimeoutKind, TimeoutLayer, TimeoutMetrics};

const MS: Duration = Duration::from_millis(1);

/// What the inner service saw of each attempt.
#[derive(Debug, Clone)]
struct Seen {
    attempt: String,
    body: Bytes,
    avoid: Vec<SocketAddr>,
    grpc_timeout: Option<String>,
    at: Instant,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// An inner service that records each attempt and answers with `answer(n)` (n from 1)
/// after `delay(n)`.
fn inner(
    answer: impl Fn(usize) -> Result<Response<ProxyBody>, ProxyError> + Clone + Send + Sync + 'static,
    delay: impl Fn(usize) -> Duration + Clone + Send + Sync + 'static,
) -> (
    impl Service<
            Request<ProxyBody>,
            Response = Response<ProxyBody>,
            Error = ProxyError,
            Future = impl Send,
        > + Clone
        + Send
        + Sync
        + 'static,
    Log,
) {
    let log = Log::default();
    let seen = log.clone();
    let service = service_fn(move |mut request: Request<ProxyBody>| {
        let (log, answer, delay) = (seen.clone(), answer.clone(), delay.clone());
        // As `Forward` does right before sending.
        crate::core::grpc::set_grpc_timeout(&mut request);
        async move {
            let at = Instant::now();
            let (parts, body) = request.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            let n = {
                let mut log = log.lock().unwrap();
                log.push(Seen {
                    attempt: parts.headers[&ATTEMPT_HEADER].to_str().unwrap().into(),
                    body,
                    avoid: parts
                        .extensions
                        .get::<AvoidEndpoints>()
                        .map(|a| a.0.clone())
                        .unwrap_or_default(),
                    grpc_timeout: parts
                        .headers
                        .get(&GRPC_TIMEOUT)
                        .map(|v| v.to_str().unwrap().into()),
                    at,
                });
                log.len()
            };
            tokio::time::sleep(delay(n)).await;
            answer(n)
        }
    });
    (service, log)
}

fn status(code: u16) -> Result<Response<ProxyBody>, ProxyError> {
    let mut response = Response::new(ProxyBody::full("answer"));
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    Ok(response)
}

fn with_header(
    mut result: Result<Response<ProxyBody>, ProxyError>,
    name: &'static str,
    value: &'static str,
) -> Result<Response<ProxyBody>, ProxyError> {
    if let Ok(response) = &mut result {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    result
}

fn no_delay(_: usize) -> Duration {
    Duration::ZERO
}

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
    let backoff = Backoff::try_new(10 * MS, Duration::from_secs(5), 0.0).unwrap();
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

fn attempts(metrics: &RetryMetrics, attempt: AttemptKind) -> u64 {
    metrics
        .attempts
        .get_or_create(&AttemptLabels {
            service: ServiceLabel("svc".into()),
            attempt,
        })
        .get()
}

fn get() -> Request<ProxyBody> {
    Request::get("http://svc/x")
        .body(ProxyBody::empty())
        .unwrap()
}

fn attempts_seen(log: &Log) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .map(|s| s.attempt.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn flaky_upstream_succeeds_on_third_attempt() {
    let (service, log) = inner(|n| if n < 3 { status(503) } else { status(200) }, no_delay);
    let (layer, metrics) = layer(config(3));
    let started = Instant::now();
    let response = layer.layer(service).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts_seen(&log), ["1", "2", "3"]);
    // Backoff 10 ms, then 20 ms.
    let at: Vec<_> = log.lock().unwrap().iter().map(|s| s.at - started).collect();
    assert_eq!(at, [Duration::ZERO, 10 * MS, 30 * MS]);
    assert_eq!(attempts(&metrics, AttemptKind::First), 1);
    assert_eq!(attempts(&metrics, AttemptKind::Retry), 2);
    assert_eq!(counter(&metrics.retries), 2);
}

/// A marker extension that is not remora's own.
#[derive(Debug, Clone, PartialEq)]
struct Foreign(u32);

#[tokio::test(start_paused = true)]
async fn every_attempt_carries_the_request_extensions() {
    let client = CallInfo::new("192.0.2.7:4000".parse().unwrap());
    for foreign in [None, Some(Foreign(7))] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let service = service_fn(move |request: Request<ProxyBody>| {
            let extensions = request.extensions();
            log.lock().unwrap().push((
                extensions.get::<CallInfo>().map(|c| c.client),
                extensions.get::<Deadline>().copied(),
                extensions.get::<Foreign>().cloned(),
            ));
            let n = log.lock().unwrap().len();
            async move {
                if n < 3 {
                    status(503)
                } else {
                    status(200)
                }
            }
        });
        let (layer, _) = layer(config(3));
        let mut request = get();
        let deadline = Deadline(Instant::now() + Duration::from_secs(60));
        request.extensions_mut().insert(client);
        request.extensions_mut().insert(deadline);
        if let Some(foreign) = foreign.clone() {
            request.extensions_mut().insert(foreign);
        }
        let response = layer.layer(service).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for attempt in seen.iter() {
            assert_eq!(
                attempt,
                &(Some(client.client), Some(deadline), foreign.clone())
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_result() {
    let (service, log) = inner(|_| status(503), no_delay);
    let (layer, metrics) = layer(config(2));
    let response = layer.layer(service).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts_seen(&log), ["1", "2"]);
    assert_eq!(counter(&metrics.retries), 1);
    assert_eq!(counter(&metrics.budget_exhausted), 0);
}

#[tokio::test(start_paused = true)]
async fn unmatched_results_are_not_retried() {
    let (service, log) = inner(|_| status(500), no_delay);
    let (layer, _) = layer(config(3));
    let response = layer.layer(service).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(attempts_seen(&log), ["1"]);
}

#[tokio::test(start_paused = true)]
async fn next_attempt_avoids_failed_endpoints() {
    let first: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let second: SocketAddr = "10.0.0.2:80".parse().unwrap();
    let (service, log) = inner(
        move |n| match n {
            1 => Err(ProxyError::Connect {
                endpoint: first.to_string(),
                source: "refused".into(),
                unsent: None,
            }),
            2 => {
                let mut response = status(503)?;
                response.extensions_mut().insert(EndpointUsed(second));
                Ok(response)
            }
            _ => status(200),
        },
        no_delay,
    );
    let (layer, _) = layer(config(3));
    let response = layer.layer(service).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let avoid: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.avoid.clone())
        .collect();
    assert_eq!(avoid, [vec![], vec![first], vec![first, second]]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_connection_gives_the_unsent_request_back_for_the_next_attempt() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let service = service_fn(move |request: Request<ProxyBody>| {
        let attempt = request.headers()[&ATTEMPT_HEADER]
            .to_str()
            .unwrap()
            .to_string();
        let n = {
            let mut log = log.lock().unwrap();
            log.push(attempt);
            log.len()
        };
        async move {
            if n == 1 {
                // What `Forward` does when no connection could be made.
                return Err(ProxyError::Connect {
                    endpoint: "10.0.0.1:80".into(),
                    source: "refused".into(),
                    unsent: Some(Unsent(Box::new(request))),
                });
            }
            let body = request.into_body().collect().await.unwrap().to_bytes();
            Ok(Response::new(ProxyBody::full(body)))
        }
    });
    let (retry, metrics) = layer(config(3));
    let post = Request::post("http://svc/x")
        .body(ProxyBody::full("order"))
        .unwrap();
    let response = retry.layer(service).oneshot(post).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body, "order",
        "the same request, body untouched, sent again"
    );
    assert_eq!(*seen.lock().unwrap(), ["1", "2"]);
    assert_eq!(counter(&metrics.retries), 1);
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_when_allowed() {
    let post = || {
        Request::post("http://svc/x")
            .body(ProxyBody::full("order"))
            .unwrap()
    };
    let (service, log) = inner(|_| status(503), no_delay);
    let (retry, _) = layer(config(3));
    let response = retry.layer(service).oneshot(post()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts_seen(&log), ["1"]);

    let (service, log) = inner(|_| status(503), no_delay);
    let (retry, _) = layer(config(3).with_retry_non_idempotent(true));
    retry.layer(service).oneshot(post()).await.unwrap();
    assert_eq!(attempts_seen(&log), ["1", "2", "3"]);
    let bodies: Vec<_> = log.lock().unwrap().iter().map(|s| s.body.clone()).collect();
    assert_eq!(bodies, ["order", "order", "order"]);
}

#[tokio::test(start_paused = true)]
async fn large_whole_body_is_sent_once() {
    let payload = Bytes::from(vec![7u8; 100 * 1024]);
    let (service, log) = inner(|_| status(503), no_delay);
    let (retry, metrics) = layer(config(3));
    let request = Request::put("http://svc/x")
        .body(ProxyBody::full(payload.clone()))
        .unwrap();
    let response = retry.layer(service).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts_seen(&log), ["1"]);
    assert_eq!(log.lock().unwrap()[0].body, payload);
    assert_eq!(counter(&metrics.not_replayable), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_the_failed_attempt_still_holds_is_not_sent_again() {
    // The upstream answers 503 after the first frame, while its connection still holds
    // the rest of the body (the client has not finished sending it).
    let held = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(Mutex::new(0));
    let (keep, count) = (held.clone(), attempts.clone());
    let service = service_fn(move |request: Request<ProxyBody>| {
        let (keep, count) = (keep.clone(), count.clone());
        async move {
            *count.lock().unwrap() += 1;
            let mut body = request.into_body();
            body.frame().await.unwrap().unwrap();
            keep.lock().unwrap().push(body);
            status(503)
        }
    });
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, crate::core::body::BoxError>>(4);
    tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
        .await
        .unwrap();
    let body = ProxyBody::boxed(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let request = Request::put("http://svc/x").body(body).unwrap();
    let (retry, metrics) = layer(config(3));
    let response = retry.layer(service).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(*attempts.lock().unwrap(), 1);
    assert_eq!(counter(&metrics.not_replayable), 1);
    assert_eq!(
        counter(&metrics.retries),
        0,
        "nothing withdrawn from the budget"
    );
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_body_given_back_unsent_is_sent_whole_by_the_retry() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let service = service_fn(move |request: Request<ProxyBody>| {
        let log = log.clone();
        async move {
            let n = {
                let mut log = log.lock().unwrap();
                log.push(Bytes::new());
                log.len()
            };
            if n == 1 {
                return Err(ProxyError::Connect {
                    endpoint: "10.0.0.1:80".into(),
                    source: "refused".into(),
                    unsent: Some(Unsent(Box::new(request))),
                });
            }
            let body = request.into_body().collect().await.unwrap().to_bytes();
            log.lock().unwrap()[n - 1] = body;
            status(200)
        }
    });
    let (retry, _) = layer(config(3));
    let put = Request::put("http://svc/x")
        .body(ProxyBody::full("payload"))
        .unwrap();
    let response = retry.layer(service).oneshot(put).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        *seen.lock().unwrap(),
        [Bytes::new(), Bytes::from("payload")]
    );
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
            let result = service.oneshot(request.map(ProxyBody::streamed)).await;
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
    let (service, log) = inner(|n| if n < 3 { status(503) } else { status(200) }, no_delay);
    let (retry, _) = layer(config(3));
    let status = through_hyper(
        retry.layer(service),
        "application/octet-stream",
        frames,
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 3);
    for seen in log.iter() {
        assert_eq!(seen.body, whole);
    }
}

#[tokio::test(start_paused = true)]
async fn large_chunked_body_is_sent_once_and_whole() {
    let (whole, frames) = chunks(100 * 1024, 4096);
    let (service, log) = inner(|_| status(503), no_delay);
    let (retry, metrics) = layer(config(3));
    let status = through_hyper(
        retry.layer(service),
        "application/octet-stream",
        frames,
        false,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts_seen(&log), ["1"]);
    assert_eq!(log.lock().unwrap()[0].body, whole);
    assert_eq!(counter(&metrics.not_replayable), 1);
}

#[tokio::test(start_paused = true)]
async fn open_grpc_stream_is_forwarded_without_waiting_for_its_end() {
    // One whole gRPC message (5-byte prefix + 3 bytes); the client keeps streaming.
    let message = Bytes::from_static(&[0, 0, 0, 0, 3, b'a', b'b', b'c']);
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let service = service_fn(move |request: Request<ProxyBody>| {
        let seen_tx = seen_tx.clone();
        async move {
            let mut body = request.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            seen_tx.send(first).await.unwrap();
            Ok::<_, ProxyError>(Response::new(ProxyBody::empty()))
        }
    });
    let (retry, _) = layer(config(3));
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        through_hyper(
            retry.layer(service),
            "application/grpc",
            vec![message.clone()],
            true,
        ),
    )
    .await
    .expect("the call must not wait for the request stream to end");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen_rx.recv().await.unwrap(), message);
}

#[tokio::test(start_paused = true)]
async fn budget_stops_a_retry_storm() {
    // 100 calls deposit 0.1 × 100 = 10 retries (no floor); every attempt fails.
    let (service, log) = inner(|_| status(503), |_| MS);
    let backoff = Backoff::try_new(10 * MS, Duration::from_secs(1), 0.0).unwrap();
    let budget = RetryBudget::try_new(0.1, 0, Duration::from_secs(10)).unwrap();
    let config = RetryConfig::try_new(3, gateway_errors(), backoff, Arc::new(budget)).unwrap();
    let (retry, metrics) = layer(config);
    let service = retry.layer(service);
    let calls = (0..100).map(|_| service.clone().oneshot(get()));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().status() == 503));
    assert_eq!(log.lock().unwrap().len(), 110);
    assert_eq!(counter(&metrics.retries), 10);
    // 90 refused after a first attempt, 10 after their retry.
    assert_eq!(counter(&metrics.budget_exhausted), 100);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_capped() {
    let (service, log) = inner(
        |n| match n {
            1 => with_header(status(503), "retry-after", "2"),
            2 => with_header(status(503), "retry-after", "3600"),
            _ => status(200),
        },
        no_delay,
    );
    let (retry, _) = layer(config(3));
    let started = Instant::now();
    retry.layer(service).oneshot(get()).await.unwrap();
    let at: Vec<_> = log.lock().unwrap().iter().map(|s| s.at - started).collect();
    // 2 s as asked, then 1 h capped at the backoff maximum (5 s).
    assert_eq!(at, [Duration::ZERO, 2000 * MS, 7000 * MS]);
}

fn grpc_unavailable(pushback: &'static str) -> Result<Response<ProxyBody>, ProxyError> {
    let response = with_header(status(200), "grpc-status", "14");
    with_header(response, "grpc-retry-pushback-ms", pushback)
}

#[tokio::test(start_paused = true)]
async fn grpc_pushback_is_honoured_and_negative_stops_retries() {
    let (service, log) = inner(
        |n| {
            if n == 1 {
                grpc_unavailable("300")
            } else {
                status(200)
            }
        },
        no_delay,
    );
    let (retry, _) = layer(config(3));
    let started = Instant::now();
    retry.layer(service).oneshot(get()).await.unwrap();
    let at: Vec<_> = log.lock().unwrap().iter().map(|s| s.at - started).collect();
    assert_eq!(at, [Duration::ZERO, 300 * MS]);

    for refusal in ["-1", "soon"] {
        let (service, log) = inner(move |_| grpc_unavailable(refusal), no_delay);
        let (retry, metrics) = layer(config(3));
        let response = retry.layer(service).oneshot(get()).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(attempts_seen(&log), ["1"], "pushback {refusal}");
        assert_eq!(counter(&metrics.retries), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_triggers_a_retry() {
    let (service, log) = inner(
        |_| status(200),
        |n| {
            if n == 1 {
                Duration::from_secs(10)
            } else {
                5 * MS
            }
        },
    );
    let config = config(3).with_per_try_timeout(Some(100 * MS)).unwrap();
    let timeouts = TimeoutMetrics::default();
    let (retry, _) = layer(config);
    let retry = retry.with_timeout_metrics(timeouts.clone());
    let started = Instant::now();
    let response = retry.layer(service).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts_seen(&log), ["1", "2"]);
    // 100 ms per-try timeout, 10 ms backoff, 5 ms answer.
    assert_eq!(started.elapsed(), 115 * MS);
    assert_eq!(timeouts.count("svc", TimeoutKind::PerTry), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_sent_once_is_still_bounded_by_the_per_try_timeout() {
    let (service, log) = inner(|_| status(200), |_| Duration::from_secs(10));
    let config = config(1).with_per_try_timeout(Some(100 * MS)).unwrap();
    let (retry, _) = layer(config);
    let started = Instant::now();
    let result = retry.layer(service).oneshot(get()).await;
    assert!(matches!(result, Err(ProxyError::Timeout(d)) if d == 100 * MS));
    assert_eq!(started.elapsed(), 100 * MS);
    assert_eq!(attempts_seen(&log), ["1"]);
}

#[tokio::test(start_paused = true)]
async fn overall_timeout_bounds_all_attempts() {
    let (service, log) = inner(|_| status(503), |_| 45 * MS);
    let (retry, _) = layer(config(100));
    let timeout = TimeoutLayer::new(
        TimeoutConfig::try_new(Some(Duration::from_millis(150))).unwrap(),
        "svc".into(),
        TimeoutMetrics::default(),
    );
    let service = timeout.layer(retry.layer(service));
    let started = Instant::now();
    let result = service.oneshot(get()).await;
    assert!(matches!(result, Err(ProxyError::Timeout(d)) if d == 150 * MS));
    assert_eq!(started.elapsed(), 150 * MS);
    // Attempts at 0, 55 (45 + 10) and 120 (100 + 20) ms; the deadline cuts the third.
    assert_eq!(attempts_seen(&log), ["1", "2", "3"]);
}

#[tokio::test(start_paused = true)]
async fn propagated_grpc_timeout_decreases_by_elapsed_time() {
    let (service, log) = inner(
        |n| if n == 1 { status(503) } else { status(200) },
        |n| if n == 1 { 200 * MS } else { Duration::ZERO },
    );
    let (retry, _) = layer(config(3));
    let timeout = TimeoutLayer::new(
        TimeoutConfig::default(),
        "svc".into(),
        TimeoutMetrics::default(),
    );
    let service = timeout.layer(retry.layer(service));
    let mut request = get();
    request
        .headers_mut()
        .insert(&GRPC_TIMEOUT, HeaderValue::from_static("1S"));
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let timeouts: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.grpc_timeout.clone().unwrap())
        .collect();
    // 200 ms for the first attempt, 10 ms backoff.
    assert_eq!(timeouts, ["1S", "790m"]);
}

#[test]
fn rejects_nonsense() {
    let budget = Arc::new(RetryBudget::default());
    let err =
        RetryConfig::try_new(0, Conditions::default(), Backoff::default(), budget).unwrap_err();
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
