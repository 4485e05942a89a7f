//! In-suite stand-ins for registry servers (Consul, Eureka, Nacos): a loopback HTTP
//! server, over TLS when given a config, that hands each request to the fake, and a
//! ticker for the fake's clock (lease and heartbeat expiry); and what the tests of every
//! registry check through a sidecar that discovers service `inventory` from one.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Serves `handler` on a loopback port (HTTP/1.1 and h2c, or TLS with `tls`); the
/// address it listens on.
pub async fn serve<H, Fut, B>(tls: Option<Arc<rustls::ServerConfig>>, handler: H) -> SocketAddr
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let handler = handler.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = match acceptor {
                    None => builder.serve_connection(TokioIo::new(tcp), service).await,
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                };
            });
        }
    });
    addr
}

/// Calls `tick` every 50 ms, for the rest of the test.
pub fn tick(tick: impl Fn() + Send + 'static) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tick();
        }
    });
}

/// Which app answered one call to `caller`'s `inventory` port (`x-upstream`); `None`
/// unless 200.
pub async fn answered_by(caller: &remora::Sidecar) -> Option<String> {
    let url = format!(
        "http://{}/stock",
        caller.addrs().service("inventory").unwrap()
    );
    let (status, headers, _) = super::get(&url).await;
    (status == 200).then(|| headers["x-upstream"].to_str().unwrap().to_string())
}

/// Whether, over 20 calls, exactly the apps `names` answered.
pub async fn served_by(caller: &remora::Sidecar, names: &[&str]) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        match answered_by(caller).await {
            Some(name) => seen.insert(name),
            None => return false,
        };
    }
    seen.iter().map(String::as_str).eq(names.iter().copied())
}

/// While `unavailable` is set the registry is down: `caller` shows `inventory` stale
/// and keeps calling `serving`; once it is cleared, the set is fresh again.
pub async fn outage_keeps_serving_stale(
    caller: &remora::Sidecar,
    unavailable: &AtomicBool,
    serving: &[&str],
) {
    unavailable.store(true, Ordering::SeqCst);
    let admin = caller.addrs().admin.unwrap();
    let stale = "remora_discovery_stale{service=\"inventory\"}";
    assert!(
        super::eventually(Duration::from_secs(3), || async {
            super::metric(admin, stale).await == 1.0
        })
        .await,
        "the outage shows as staleness"
    );
    let endpoints = super::get(&format!("http://{admin}/endpoints")).await.2;
    assert!(endpoints.contains("\"stale\": true"), "{endpoints}");
    assert!(
        served_by(caller, serving).await,
        "the last known set serves"
    );
    unavailable.store(false, Ordering::SeqCst);
    assert!(
        super::eventually(Duration::from_secs(6), || async {
            super::metric(admin, stale).await == 0.0
        })
        .await,
        "fresh again when the server returns"
    );
}
