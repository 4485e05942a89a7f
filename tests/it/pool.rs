//! Connection pools under a burst on a cold pool: connects to an endpoint are bounded
//! (`upstream.max_connecting_per_endpoint`), the other calls wait in the endpoint's
//! pending queue for a released connection or a connect slot, a full queue refuses at
//! once, and a call that waits too long fails; HTTP/2 opens at most its few connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::support::metrics_text::{metric, metric_or_zero};
use crate::support::*;

/// A listener on an ephemeral loopback port with an accept queue of `backlog`.
fn small_backlog_listener(backlog: i32) -> TcpListener {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(backlog).unwrap();
    socket.set_nonblocking(true).unwrap();
    TcpListener::from_std(socket.into()).unwrap()
}

/// An HTTP/1.1 and h2c upstream on `listener` that accepts nothing until `start` fires,
/// then answers `ok` to everything; counts the connections it accepted.
fn gated_upstream(listener: TcpListener, start: oneshot::Receiver<()>) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        if start.await.is_err() {
            return;
        }
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(full("ok")))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    accepted
}

fn sidecar_yaml(upstream: SocketAddr, protocol: &str, settings: &str) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         upstream: {{ {settings} }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    protocol: {protocol}\n    endpoints: [{upstream}]\n"
    )
}

/// One HTTP/1.1 GET on a connection of its own, read to its end (at most 20 s); the
/// status and the body.
async fn get_alone(addr: SocketAddr) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .expect("an answer within 20 s")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_string());
    (status_of(&response), body)
}

/// Polls `series` until it reaches `at_least`; false after `limit`.
async fn gauge_reaches(admin: SocketAddr, series: &str, at_least: f64, limit: Duration) -> bool {
    eventually(limit, || async move {
        metric_or_zero(admin, series).await >= at_least
    })
    .await
}

#[tokio::test]
async fn a_burst_of_http1_calls_on_a_cold_pool_connects_a_few_at_a_time_and_all_succeed() {
    const CALLS: usize = 300;
    let listener = small_backlog_listener(8);
    let upstream = listener.local_addr().unwrap();
    let (start, gate) = oneshot::channel();
    let accepted = gated_upstream(listener, gate);
    let proxy = sidecar(&sidecar_yaml(
        upstream,
        "http1",
        "max_connecting_per_endpoint: 16, connect_timeout: 5s, pending_timeout: 8s",
    ))
    .await;
    let svc = proxy.addrs().service("svc").unwrap();
    let admin = proxy.addrs().admin.unwrap();

    let calls: Vec<_> = (0..CALLS).map(|_| tokio::spawn(get_alone(svc))).collect();
    // The upstream accepts nothing yet: its queue takes 9 connections, the rest of the
    // SYNs are dropped. At most 16 connects are under way at once, so nearly every call
    // waits in the queue instead of sending a SYN of its own.
    assert!(
        gauge_reaches(
            admin,
            "remora_upstream_pending",
            250.0,
            Duration::from_secs(8)
        )
        .await,
        "calls wait in the pending queue: {}",
        metric_or_zero(admin, "remora_upstream_pending").await
    );
    start.send(()).unwrap();
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    let connections = accepted.load(Ordering::SeqCst);
    // The queued connections and the slots' connects, plus a few more once the queue
    // drains; released connections carry the rest. Without the bound: one per call.
    assert!(
        connections <= 64,
        "{connections} connections for {CALLS} calls"
    );
    assert_eq!(metric(admin, "remora_upstream_pending").await, 0.0);
    assert_eq!(
        metric_or_zero(
            admin,
            r#"remora_upstream_pending_overflow_total{service="svc"}"#
        )
        .await,
        0.0
    );
}

/// A listener whose accept queue is full and that never accepts: a connect to it hangs
/// (its SYN is dropped) until the connect timeout. Returns it and the connections that
/// fill it (kept open).
async fn full_listener() -> (TcpListener, Vec<TcpStream>) {
    let listener = small_backlog_listener(0);
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(error)) => panic!("connect to the listener: {error}"),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "the accept queue never fills");
    }
    (listener, fillers)
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_and_a_call_that_waits_too_long_fails() {
    let (listener, _fillers) = full_listener().await;
    let upstream = listener.local_addr().unwrap();
    // Slots 2, queue 3: of 10 calls, 2 connect (and hang), 3 wait, 5 are refused.
    let proxy = sidecar(&sidecar_yaml(
        upstream,
        "http1",
        "max_connecting_per_endpoint: 2, max_pending_per_endpoint: 3, \
         pending_timeout: 1s, connect_timeout: 3s",
    ))
    .await;
    let svc = proxy.addrs().service("svc").unwrap();
    let admin = proxy.addrs().admin.unwrap();

    let began = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(async move {
                let answer = get_alone(svc).await;
                (answer, began.elapsed())
            })
        })
        .collect();
    let (mut full, mut waited, mut connect) = (0, 0, 0);
    for call in calls {
        let ((status, body), elapsed) = call.await.unwrap();
        assert_eq!(status, 502, "{body}");
        if body.contains("pending queue is full (3 calls waiting)") {
            full += 1;
            assert!(
                elapsed < Duration::from_secs(1),
                "refused at once: {elapsed:?}"
            );
        } else if body.contains("no connection free within the pending timeout (1s)") {
            waited += 1;
        } else if body.contains("timed out after 3s") {
            connect += 1;
        } else {
            panic!("unexpected answer: {body}");
        }
    }
    assert_eq!((full, waited, connect), (5, 3, 2));
    assert_eq!(
        metric(
            admin,
            r#"remora_upstream_pending_overflow_total{service="svc"}"#
        )
        .await,
        5.0
    );
    assert_eq!(
        metric(
            admin,
            r#"remora_upstream_pending_timeouts_total{service="svc"}"#
        )
        .await,
        3.0
    );
    assert_eq!(metric(admin, "remora_upstream_pending").await, 0.0);
}

#[tokio::test]
async fn a_burst_of_h2c_streams_on_a_cold_pool_opens_at_most_the_configured_connections() {
    const STREAMS: usize = 640;
    let listener = small_backlog_listener(8);
    let upstream = listener.local_addr().unwrap();
    let (start, gate) = oneshot::channel();
    let accepted = gated_upstream(listener, gate);
    start.send(()).unwrap();
    let proxy = sidecar(&sidecar_yaml(
        upstream,
        "http2",
        "http2_connections_per_endpoint: 2",
    ))
    .await;
    let svc = proxy.addrs().service("svc").unwrap();

    let client = http2_client();
    let calls: Vec<_> = (0..STREAMS)
        .map(|_| {
            let client = client.clone();
            let uri: http::Uri = format!("http://{svc}/").parse().unwrap();
            tokio::spawn(async move { client.get(uri).await.map(|r| r.status()) })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 200);
    }
    let connections = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&connections),
        "{connections} upstream connections"
    );
}
