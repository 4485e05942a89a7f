//! [`TcpForward`] through real loopback sockets: the pick, the retry on another endpoint,
//! the bound on attempts, the load a connection puts on its endpoint, what observers see.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::discovery::Instance;

/// An endpoint that echoes what it reads.
async fn echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

/// An address nothing listens on (bound, then closed): connecting is refused.
async fn closed() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn forward(addrs: &[SocketAddr], attempts: u32) -> (TcpForward, Arc<EndpointSet>) {
    let endpoints = Arc::new(EndpointSet::new());
    let instances: Vec<Instance> = addrs.iter().copied().map(Instance::new).collect();
    endpoints.update(&instances);
    let config = TcpConfig::try_new(
        Duration::from_secs(1),
        Duration::from_secs(60),
        attempts,
        100,
    )
    .unwrap();
    let forward = TcpForward::new(Arc::from("cache"), endpoints.clone(), config);
    (forward, endpoints)
}

/// Records each attempt's endpoint and whether it failed.
#[derive(Default)]
struct Outcomes(Mutex<Vec<(SocketAddr, bool)>>);

impl EndpointObserver for Outcomes {
    fn observe(
        &self,
        endpoint: &Endpoint,
        result: &Result<Response<ProxyBody>, ProxyError>,
        _elapsed: Duration,
    ) {
        let failed = matches!(result, Err(ProxyError::Connect { .. }));
        self.0.lock().unwrap().push((endpoint.addr, failed));
    }
}

#[tokio::test]
async fn a_connection_reaches_an_endpoint_and_counts_on_it_while_open() {
    let addr = echo().await;
    let (forward, endpoints) = forward(&[addr], 3);
    let mut connected = forward.connect().await.unwrap();
    assert_eq!(connected.open.endpoint().addr, addr);
    let in_flight = || endpoints.snapshot()[0].in_flight.load(Ordering::Relaxed);
    assert_eq!(in_flight(), 1);
    connected.stream.write_all(b"hello").await.unwrap();
    let mut back = [0; 5];
    connected.stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello");
    drop(connected);
    assert_eq!(in_flight(), 0);
}

#[tokio::test]
async fn least_request_spreads_connections_by_how_many_are_open() {
    let (a, b) = (echo().await, echo().await);
    let config =
        crate::balance::BalancerConfig::try_new(crate::balance::Balancer::LeastRequest, 0).unwrap();
    let endpoints = Arc::new(EndpointSet::with_config(config));
    endpoints.update(&[Instance::new(a), Instance::new(b)]);
    let settings =
        TcpConfig::try_new(Duration::from_secs(1), Duration::from_secs(60), 1, 100).unwrap();
    let forward = TcpForward::new(Arc::from("cache"), endpoints.clone(), settings);
    // Long-lived connections: each new one goes where fewer are open.
    let mut open = Vec::new();
    for _ in 0..6 {
        open.push(forward.connect().await.unwrap());
    }
    let on = |addr| {
        open.iter()
            .filter(|c| c.open.endpoint().addr == addr)
            .count()
    };
    assert_eq!((on(a), on(b)), (3, 3));
    // Three close on one endpoint: the next three go there.
    open.retain(|c| c.open.endpoint().addr != a);
    for _ in 0..3 {
        let connected = forward.connect().await.unwrap();
        assert_eq!(connected.open.endpoint().addr, a);
        open.push(connected);
    }
}

#[tokio::test]
async fn a_refused_endpoint_is_retried_on_another_and_observed_as_a_connect_failure() {
    let live = echo().await;
    let dead = closed().await;
    let outcomes = Arc::new(Outcomes::default());
    let (plain, _) = forward(&[dead, live], 2);
    let forward = plain.with_observers(vec![outcomes.clone() as Arc<dyn EndpointObserver>]);
    // P2C picks at random: over many connections, some start on the dead endpoint.
    for _ in 0..20 {
        let connected = forward.connect().await.unwrap();
        assert_eq!(connected.open.endpoint().addr, live);
    }
    let outcomes = outcomes.0.lock().unwrap();
    assert!(outcomes
        .iter()
        .all(|&(addr, failed)| failed == (addr == dead)));
    assert_eq!(outcomes.iter().filter(|(_, failed)| !failed).count(), 20);
}

#[tokio::test]
async fn attempts_are_bounded_and_never_repeat_an_endpoint() {
    let dead = [closed().await, closed().await, closed().await];
    let (two, _) = forward(&dead, 2);
    let error = two.connect().await.unwrap_err();
    let TcpConnectError::Connect { attempts, .. } = error else {
        panic!("{error:?}");
    };
    assert_eq!(attempts, 2);
    // Fewer endpoints than attempts: each is tried once.
    let (three, _) = forward(&dead[..1], 3);
    let error = three.connect().await.unwrap_err();
    assert!(
        matches!(error, TcpConnectError::Connect { attempts: 1, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn no_endpoint_is_said_so() {
    let (forward, _) = forward(&[], 3);
    let error = forward.connect().await.unwrap_err();
    assert!(matches!(error, TcpConnectError::NoEndpoint(_)), "{error:?}");
    assert_eq!(error.to_string(), "service cache: no healthy endpoint");
}

#[test]
fn settings_under_which_nothing_could_be_forwarded_are_refused() {
    let second = Duration::from_secs(1);
    let try_new = TcpConfig::try_new;
    assert_eq!(
        try_new(Duration::ZERO, second, 1, 1),
        Err(TcpConfigError::ZeroConnectTimeout)
    );
    assert_eq!(
        try_new(second, Duration::ZERO, 1, 1),
        Err(TcpConfigError::ZeroIdleTimeout)
    );
    assert_eq!(
        try_new(second, second, 0, 1),
        Err(TcpConfigError::NoConnectAttempts)
    );
    assert_eq!(
        try_new(second, second, 1, 0),
        Err(TcpConfigError::NoConnections)
    );
    assert!(try_new(second, second, 1, 1).is_ok());
}
