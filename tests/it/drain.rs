//! Graceful shutdown of the real binary: SIGTERM turns `/ready` false, stops accepting,
//! lets in-flight requests finish, and exits 0.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::support::*;

#[tokio::test]
async fn sigterm_drains_an_in_flight_request_then_exits_zero() {
    let upstream = serve(|_r: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Response::new(full("slow but complete"))
    })
    .await;
    let (mut process, admin, port, _dir) = sidecar_process(upstream, "auto", "10s").await;
    let (status, _, _) = get(&format!("http://127.0.0.1:{admin}/ready")).await;
    assert_eq!(status, 200);

    let url = format!("http://127.0.0.1:{port}/");
    let in_flight = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    process.signal("TERM");

    assert!(
        eventually(Duration::from_secs(1), || async {
            get(&format!("http://127.0.0.1:{admin}/ready")).await.0 == 503
        })
        .await,
        "/ready did not turn false while draining"
    );
    assert!(
        eventually(Duration::from_secs(1), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        })
        .await,
        "the listener still accepts during drain"
    );
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "slow but complete"));
    let exit = process.wait(Duration::from_secs(5)).await;
    assert!(exit.success(), "{exit:?}: {}", process.log());
}

/// Writes a config with a `slow` service whose upstream answers after `delay`, and runs
/// the binary on it: (process, admin port, service port).
async fn slow_sidecar(delay: Duration, drain_timeout: &str) -> (Process, u16, tempfile::TempDir) {
    let upstream = serve(move |_r: Request<Incoming>| async move {
        tokio::time::sleep(delay).await;
        Response::new(full("slow but complete"))
    })
    .await;
    let (process, _admin, port, dir) = sidecar_process(upstream, "http1", drain_timeout).await;
    (process, port, dir)
}

/// A request still in flight when `drain_timeout` runs out does not hold the process:
/// its connection is closed (the caller sees an error, not a made-up answer), remora
/// says so and exits 0.
#[tokio::test]
async fn drain_timeout_cuts_what_is_still_in_flight_and_exits_zero() {
    let (mut process, port, _dir) = slow_sidecar(Duration::from_secs(30), "1s").await;
    let url = format!("http://127.0.0.1:{port}/");
    let in_flight = tokio::spawn(async move {
        let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        http1_client().request(request).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    process.signal("TERM");
    let exit = process.wait(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}: {}", process.log());
    let answered = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the caller is not left hanging")
        .unwrap();
    assert!(answered.is_err(), "no answer was made up: {answered:?}");
    assert!(process.log().contains("drain timeout"), "{}", process.log());
}

/// HTTP/2 callers: streams in flight when SIGTERM arrives complete on their connection
/// (the sidecar sends GOAWAY and lets them finish).
#[tokio::test]
async fn h2_streams_in_flight_finish_during_drain() {
    let (mut process, port, _dir) = slow_sidecar(Duration::from_millis(1500), "10s").await;
    let client = http2_client();
    let mut calls = Vec::new();
    for _ in 0..5 {
        let request = Request::get(format!("http://127.0.0.1:{port}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let response = client.request(request).await?;
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body()).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body.to_bytes()))
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    process.signal("TERM");
    for call in calls {
        let (status, body) = call.await.unwrap().expect("the stream finished");
        assert_eq!(
            (status.as_u16(), &body[..]),
            (200, &b"slow but complete"[..])
        );
    }
    let exit = process.wait(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}: {}", process.log());
}

/// gRPC callers whose streams are open both ways when SIGTERM arrives: they still send,
/// are answered and end with OK (the streams, and the request bodies sent upstream, run
/// in their connections' tasks, which the drain waits for), then the process exits 0.
#[tokio::test]
async fn grpc_streams_open_both_ways_at_sigterm_finish_during_drain() {
    let upstream = echo::serve().await;
    let (mut process, _admin, port, _dir) = sidecar_process(upstream, "http2", "10s").await;
    let client = echo::client(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let mut calls = Vec::new();
    for i in 0..5 {
        let (sender, messages) = tokio::sync::mpsc::channel(4);
        sender.send(echo::request(&format!("{i}-a"))).await.unwrap();
        let messages = tokio_stream::wrappers::ReceiverStream::new(messages);
        let mut replies = client.clone().bidi(messages).await.unwrap().into_inner();
        // Answered: the call is open through the sidecar to the upstream and back.
        let first = replies.message().await.unwrap().expect("a first answer");
        assert_eq!(first.message, format!("re:{i}-a"));
        calls.push((sender, replies));
    }
    process.signal("TERM");
    for (i, (sender, mut replies)) in calls.into_iter().enumerate() {
        sender.send(echo::request(&format!("{i}-b"))).await.unwrap();
        drop(sender);
        let second = replies.message().await.unwrap().expect("a second answer");
        assert_eq!(second.message, format!("re:{i}-b"));
        assert!(replies.message().await.unwrap().is_none(), "ends with OK");
    }
    let exit = process.wait(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit:?}: {}", process.log());
}
