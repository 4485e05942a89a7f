//! TCP passthrough (`protocol: tcp`) through real sockets, in front of a real Redis: a
//! client's sidecar forwards a service's port to a server's sidecar, whose strict
//! inbound (`inbound.protocol: tcp`) terminates mutual TLS and forwards plaintext to
//! Redis; a Redis client speaks through it. Around that: endpoints that die, connect
//! failures, the idle timeout, drain, and callers a strict TCP inbound refuses.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::support::redis_harness::{closed_within, command, ping, port_behind, Redis};
use crate::support::{self, certs, metric, metric_or_zero};

/// The certificates of one trust domain: `app` (the client), `cache` (the server in
/// front of Redis) and `intruder` (of the domain, but not allowed).
fn mesh_certs() -> tempfile::TempDir {
    certs::issue_mesh("mesh.test", &["app", "cache", "intruder"])
}

/// The top-level `tls` block of `service`'s sidecar.
fn own_tls(certs: &tempfile::TempDir, service: &str) -> String {
    let dir = certs.path().display();
    format!("tls:\n  cert: {dir}/{service}.pem\n  key: {dir}/{service}-key.pem\n  bundle: {dir}/ca.pem\n")
}

/// The server's sidecar: a strict TCP inbound to `redis` that admits `app` only.
async fn server_sidecar(certs: &tempfile::TempDir, redis: SocketAddr) -> remora::Sidecar {
    support::sidecar(&format!(
        "service: cache\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         {}\
         inbound:\n  listen: 127.0.0.1:0\n  app: {redis}\n  protocol: tcp\n  tls: strict\n  allow: [app]\n",
        own_tls(certs, "cache")
    ))
    .await
}

/// `identity`'s sidecar: service `cache` on its own port, as raw TCP over mutual TLS to
/// `endpoint`.
async fn client_sidecar(
    certs: &tempfile::TempDir,
    identity: &str,
    endpoint: SocketAddr,
) -> remora::Sidecar {
    support::sidecar(&format!(
        "service: {identity}\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         {}\
         services:\n  cache:\n    listen: 127.0.0.1:0\n    protocol: tcp\n    endpoints: [{endpoint}]\n    tls: {{ mesh: true }}\n",
        own_tls(certs, identity)
    ))
    .await
}

/// A plaintext sidecar whose TCP service `cache` goes to `endpoints`, with `extra`
/// service fields (indented by 4) and top-level `top` lines.
async fn plain_sidecar(endpoints: &[SocketAddr], extra: &str, top: &str) -> remora::Sidecar {
    let endpoints: Vec<String> = endpoints.iter().map(SocketAddr::to_string).collect();
    support::sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         {top}\
         services:\n  cache:\n    listen: 127.0.0.1:0\n    protocol: tcp\n    endpoints: [{}]\n{extra}",
        endpoints.join(", ")
    ))
    .await
}

fn cache_port(sidecar: &remora::Sidecar) -> SocketAddr {
    sidecar.addrs().service("cache").unwrap()
}

/// Whether `series` reads `value` within 2 s (a refused connection is closed by the
/// sidecar's task, which counts it around the close).
async fn reaches(admin: SocketAddr, series: &str, value: f64) -> bool {
    support::eventually(Duration::from_secs(2), || async {
        support::metric_or_zero(admin, series).await == value
    })
    .await
}

#[tokio::test]
async fn a_redis_client_sets_and_gets_through_two_sidecars_inside_mutual_tls() {
    let redis = Redis::start().await;
    let certs = mesh_certs();
    let server = server_sidecar(&certs, redis.addr()).await;
    let client = client_sidecar(&certs, "app", server.addrs().inbound.unwrap()).await;

    let url = format!("redis://{}/", cache_port(&client));
    let redis_client = redis::Client::open(url).unwrap();
    let mut connection = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("SET")
        .arg("greeting")
        .arg("hello through the mesh")
        .query_async(&mut connection)
        .await
        .unwrap();
    let value: String = redis::cmd("GET")
        .arg("greeting")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(value, "hello through the mesh");
    // Redis itself holds the value: the bytes reached it whole.
    let mut direct = TcpStream::connect(redis.addr()).await.unwrap();
    let answer = command(&mut direct, "GET greeting").await.unwrap();
    assert_eq!(answer, "$22\r\nhello through the mesh\r\n");

    // Both sidecars count the connection and its bytes, each in its direction.
    let client_admin = client.addrs().admin.unwrap();
    let outbound = r#"{direction="outbound",service="cache"}"#;
    let opened = format!("remora_tcp_connections_opened_total{outbound}");
    assert_eq!(metric(client_admin, &opened).await, 1.0);
    let active = format!("remora_tcp_connections_active{outbound}");
    assert_eq!(metric(client_admin, &active).await, 1.0);
    let received = format!("remora_tcp_received_bytes_total{outbound}");
    assert!(metric(client_admin, &received).await > 0.0);
    let sent = format!("remora_tcp_sent_bytes_total{outbound}");
    assert!(metric(client_admin, &sent).await > 0.0);
    let server_admin = server.addrs().admin.unwrap();
    let inbound = r#"{direction="inbound",service="inbound"}"#;
    let opened = format!("remora_tcp_connections_opened_total{inbound}");
    assert_eq!(metric(server_admin, &opened).await, 1.0);

    drop(connection);
    drop(redis_client);
    let active = format!("remora_tcp_connections_active{outbound}");
    let closed = support::eventually(Duration::from_secs(5), || async {
        metric(client_admin, &active).await == 0.0
    })
    .await;
    assert!(closed, "the closed connection is still counted as active");
}

#[tokio::test]
async fn a_strict_tcp_inbound_refuses_plaintext_http_peers_and_callers_not_allowed() {
    let redis = Redis::start().await;
    let certs = mesh_certs();
    let server = server_sidecar(&certs, redis.addr()).await;
    let inbound = server.addrs().inbound.unwrap();
    let admin = server.addrs().admin.unwrap();

    // Plaintext: the handshake fails (the answer is a TLS alert, if anything) and Redis
    // never sees the command.
    let mut plain = TcpStream::connect(inbound).await.unwrap();
    assert!(!ping(&mut plain).await);
    assert!(closed_within(&mut plain, Duration::from_secs(2)).await);
    let failures = r#"remora_tls_handshake_failures_total{listener="inbound"}"#;
    assert!(reaches(admin, failures, 1.0).await);

    // A sidecar calling it as an HTTP service over mutual TLS offers ALPN http/1.1,
    // which a TCP inbound does not speak: refused in the handshake, answered 502.
    let http = support::sidecar(&format!(
        "service: app\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         {}\
         services:\n  cache:\n    listen: 127.0.0.1:0\n    protocol: http1\n    endpoints: [{inbound}]\n    tls: {{ mesh: true }}\n",
        own_tls(&certs, "app")
    ))
    .await;
    let (status, _, _) = support::get(&format!("http://{}/", cache_port(&http))).await;
    assert_eq!(status, 502);
    assert!(reaches(admin, failures, 2.0).await);

    // A caller of the trust domain that `allow` does not name: handshaken, then closed.
    let intruder = client_sidecar(&certs, "intruder", inbound).await;
    let mut stream = TcpStream::connect(cache_port(&intruder)).await.unwrap();
    assert_eq!(command(&mut stream, "PING").await, None);
    let denied = r#"remora_tcp_connections_failed_total{direction="inbound",service="inbound",reason="denied"}"#;
    assert!(reaches(admin, denied, 1.0).await);
    let by_caller =
        r#"remora_requests_denied_total{listener="inbound",caller="spiffe://mesh.test/intruder"}"#;
    assert_eq!(metric(admin, by_caller).await, 1.0);

    // The allowed caller still gets through.
    let client = client_sidecar(&certs, "app", inbound).await;
    let mut stream = TcpStream::connect(cache_port(&client)).await.unwrap();
    assert!(ping(&mut stream).await);
}

#[tokio::test]
async fn a_permissive_tcp_inbound_forwards_plaintext_and_mutual_tls_on_one_port() {
    let redis = Redis::start().await;
    let certs = mesh_certs();
    let server = support::sidecar(&format!(
        "service: cache\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         {}\
         inbound:\n  listen: 127.0.0.1:0\n  app: {}\n  protocol: tcp\n  tls: permissive\n",
        own_tls(&certs, "cache"),
        redis.addr()
    ))
    .await;
    let inbound = server.addrs().inbound.unwrap();
    let mut plain = TcpStream::connect(inbound).await.unwrap();
    assert!(ping(&mut plain).await);
    let client = client_sidecar(&certs, "app", inbound).await;
    let mut meshed = TcpStream::connect(cache_port(&client)).await.unwrap();
    assert!(ping(&mut meshed).await);
    let admin = server.addrs().admin.unwrap();
    let opened = r#"remora_tcp_connections_opened_total{direction="inbound",service="inbound"}"#;
    assert_eq!(metric(admin, opened).await, 2.0);
}

#[tokio::test]
async fn a_killed_endpoint_is_skipped_on_the_next_connect() {
    let mut first = Redis::start().await;
    let second = Redis::start().await;
    let sidecar = plain_sidecar(
        &[first.addr(), second.addr()],
        "    balancer: { algorithm: round_robin, panic_threshold: 0% }\n    \
         outlier_detection: { consecutive_failures: 1, failure_on: [connect-failure] }\n",
        "",
    )
    .await;
    let entry = cache_port(&sidecar);
    // Round robin: both serve.
    let mut ports = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(entry).await.unwrap();
        ports.push(port_behind(&mut stream).await.unwrap());
    }
    ports.sort_unstable();
    let mut expected = vec![first.addr().port(), second.addr().port()];
    expected.sort_unstable();
    assert_eq!(ports, expected);

    first.kill();
    // Every connection from now on reaches the live one: the first that picks the dead
    // one is retried on the live one, and the dead one, ejected by that one failure, is
    // not tried again.
    for _ in 0..6 {
        let mut stream = TcpStream::connect(entry).await.unwrap();
        assert_eq!(port_behind(&mut stream).await, Some(second.addr().port()));
    }
    let admin = sidecar.addrs().admin.unwrap();
    let ejections = r#"remora_outlier_ejections_total{service="cache"}"#;
    assert_eq!(metric(admin, ejections).await, 1.0);
    let failed = r#"remora_tcp_connections_failed_total{direction="outbound",service="cache",reason="connect"}"#;
    // Absent means no connection was given up; the same spelling counts below.
    assert_eq!(metric_or_zero(admin, failed).await, 0.0);

    // With the live one gone too, a connection is given up and counted.
    drop(second);
    let mut stream = TcpStream::connect(entry).await.unwrap();
    assert_eq!(command(&mut stream, "PING").await, None);
    let any_failed = support::eventually(Duration::from_secs(2), || async {
        let text = support::metrics_text::scrape(admin).await;
        let connect = support::metrics_text::value_or_zero(&text, failed);
        let none = r#"remora_tcp_connections_failed_total{direction="outbound",service="cache",reason="no_endpoint"}"#;
        connect + support::metrics_text::value_or_zero(&text, none) == 1.0
    })
    .await;
    assert!(any_failed, "the connection given up is not counted");
}

#[tokio::test]
async fn a_connect_failure_is_retried_on_another_endpoint_within_the_attempts() {
    let redis = Redis::start().await;
    let dead = support::dead_endpoint();
    let balancer = "    balancer: { algorithm: round_robin }\n";
    // Round robin alternates: every other connection picks the dead endpoint first.
    let retrying = plain_sidecar(&[dead, redis.addr()], balancer, "").await;
    for _ in 0..6 {
        let mut stream = TcpStream::connect(cache_port(&retrying)).await.unwrap();
        assert!(ping(&mut stream).await, "a connection was not retried");
    }
    // One attempt only: the connections that pick the dead endpoint are given up.
    let once = format!("{balancer}    tcp: {{ connect_attempts: 1 }}\n");
    let single = plain_sidecar(&[dead, redis.addr()], &once, "").await;
    let mut answered = 0;
    for _ in 0..6 {
        let mut stream = TcpStream::connect(cache_port(&single)).await.unwrap();
        answered += usize::from(ping(&mut stream).await);
    }
    assert_eq!(answered, 3);
    let admin = single.addrs().admin.unwrap();
    let failed = r#"remora_tcp_connections_failed_total{direction="outbound",service="cache",reason="connect"}"#;
    assert!(reaches(admin, failed, 3.0).await);
}

#[tokio::test]
async fn a_connection_quiet_both_ways_for_the_idle_timeout_is_closed() {
    let redis = Redis::start().await;
    let sidecar = plain_sidecar(&[redis.addr()], "    tcp: { idle_timeout: 400ms }\n", "").await;
    let entry = cache_port(&sidecar);
    let mut talking = TcpStream::connect(entry).await.unwrap();
    let mut quiet = TcpStream::connect(entry).await.unwrap();
    assert!(ping(&mut talking).await);
    assert!(ping(&mut quiet).await);
    // A PING every 150 ms keeps one connection open well past the timeout.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(ping(&mut talking).await, "an active connection was closed");
    }
    // The other said nothing for 1.2 s: closed, without Redis having closed it.
    assert!(closed_within(&mut quiet, Duration::from_millis(100)).await);
}

#[tokio::test]
async fn drain_lets_an_open_stream_finish_within_drain_timeout() {
    let redis = Redis::start().await;
    let sidecar = plain_sidecar(&[redis.addr()], "", "drain_timeout: 3s\n").await;
    let entry = cache_port(&sidecar);
    let mut open = TcpStream::connect(entry).await.unwrap();
    assert!(ping(&mut open).await);

    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(sidecar.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: no new connection is taken, the open one goes on.
    let refused = match TcpStream::connect(entry).await {
        Err(_) => true,
        Ok(mut stream) => !ping(&mut stream).await,
    };
    assert!(refused, "a new connection was forwarded while draining");
    assert!(
        ping(&mut open).await,
        "the open connection was cut at shutdown"
    );
    assert!(!shutdown.is_finished());
    // It ends by itself: the drain ends with it, well before the timeout.
    drop(open);
    tokio::time::timeout(Duration::from_secs(2), shutdown)
        .await
        .expect("the drain did not end when the last connection did")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn drain_closes_what_is_still_open_at_drain_timeout() {
    let redis = Redis::start().await;
    let sidecar = plain_sidecar(&[redis.addr()], "", "drain_timeout: 500ms\n").await;
    let mut open = TcpStream::connect(cache_port(&sidecar)).await.unwrap();
    assert!(ping(&mut open).await);
    let started = std::time::Instant::now();
    sidecar.shutdown().await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(closed_within(&mut open, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn a_tcp_service_takes_no_http_fields_and_needs_its_own_port() {
    let refused = remora::build::parse(
        "test.yaml",
        "outbound: { listen: 127.0.0.1:0 }\n\
         services:\n  cache:\n    protocol: tcp\n    endpoints: [127.0.0.1:6379]\n    retry: default\n",
    )
    .unwrap_err()
    .to_string();
    assert!(refused.contains("services.cache.protocol"), "{refused}");
    assert!(
        refused.contains("give service `cache` a `listen` address"),
        "{refused}"
    );
    assert!(refused.contains("`retry` is HTTP only"), "{refused}");
    let refused = remora::build::parse(
        "test.yaml",
        "services:\n  cache:\n    listen: 127.0.0.1:0\n    protocol: tcp\n    endpoints: [127.0.0.1:6379]\n    tcp: { connect_attempts: 0 }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("services.cache.tcp.connect_attempts"),
        "{refused}"
    );
}
