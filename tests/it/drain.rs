//! Graceful shutdown of the real binary: SIGTERM turns `/ready` false, stops accepting,
//! lets in-flight requests finish, and exits 0.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::support::*;

#[tokio::test]
async fn sigterm_drains_an_in_flight_request_then_exits_zero() {
    let upstream = serve(|_r: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Response::new(full("slow but complete"))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.yaml");
    let (admin, port) = (free_port(), free_port());
    std::fs::write(
        &path,
        format!(
            "admin: {{ listen: 127.0.0.1:{admin} }}\ndrain_timeout: 10s\n\
             services:\n  slow:\n    listen: 127.0.0.1:{port}\n    endpoints: [{upstream}]\n"
        ),
    )
    .unwrap();
    let mut process = Process::run(&path, SocketAddr::from(([127, 0, 0, 1], admin))).await;
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
