//! The outbound half of mutual TLS, and TLS to servers outside the mesh, through real
//! sockets: a sidecar configured in YAML calls TLS fronts (tokio-rustls terminators in
//! front of plaintext upstreams, see `support::tls_front`) and a test asserts what the
//! server saw (ALPN, the client's identity, plaintext or TLS) and what the caller got.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use remora::discovery::{EtcdConfig, EtcdRegistry, Registry};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::tls_front::{Accepted, Pki, TlsFront, DOMAIN};
use crate::support::*;

fn spiffe(service: &str) -> String {
    format!("spiffe://{DOMAIN}/{service}")
}

/// What a TLS connection from the `frontend` sidecar looks like to the server.
fn from_frontend(alpn: &str) -> Accepted {
    Accepted::Tls {
        alpn: Some(alpn.to_string()),
        peer: Some(spiffe("frontend")),
    }
}

/// The `frontend` sidecar (certificate of `frontend`), with `services` as YAML lines.
async fn frontend(pki: &Pki, services: &str) -> remora::Sidecar {
    sidecar(&format!(
        "service: frontend\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         tls: {}\n\
         services:\n{services}",
        pki.issue("frontend").yaml()
    ))
    .await
}

/// A service `name` on its own port, to `endpoint`, with `extra` YAML (indented 4).
fn service(name: &str, protocol: &str, endpoint: SocketAddr, extra: &str) -> String {
    format!(
        "  {name}:\n    listen: 127.0.0.1:0\n    protocol: {protocol}\n    endpoints: [{endpoint}]\n{extra}"
    )
}

fn url(sidecar: &remora::Sidecar, service: &str, path: &str) -> String {
    format!("http://{}{path}", sidecar.addrs().service(service).unwrap())
}

#[tokio::test]
async fn mesh_tls_reaches_the_expected_identity_over_http1_and_http2() {
    let pki = Pki::new();
    let (app, log) = recording("orders").await;
    let front = TlsFront::start(pki.issue("orders").mesh_server_config(), app).await;
    let mesh = "    tls: { mesh: true }\n";
    let named = "    tls: { mesh: true, identity: orders }\n";
    let full_id = format!(
        "    tls: {{ mesh: true, identity: \"{}\" }}\n",
        spiffe("orders")
    );
    let services = [
        service("orders", "http1", front.addr, mesh),
        service("orders-h2", "http2", front.addr, named),
        service("orders-id", "http1", front.addr, &full_id),
    ];
    let frontend = frontend(&pki, &services.concat()).await;

    for _ in 0..3 {
        let (status, headers, body) = get(&url(&frontend, "orders", "/one")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "echo:/one"));
        assert_eq!(headers["x-upstream"], "orders");
    }
    let (status, _, _) = get(&url(&frontend, "orders-h2", "/two")).await;
    assert_eq!(status, 200);
    let (status, _, _) = get(&url(&frontend, "orders-id", "/three")).await;
    assert_eq!(status, 200);

    let versions: Vec<_> = log.all().iter().map(|seen| seen.version).collect();
    use http::Version;
    assert_eq!(
        versions,
        [
            Version::HTTP_11,
            Version::HTTP_11,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_11
        ]
    );
    // One pooled connection per service: the keep-alive connection is reused.
    assert_eq!(
        front.accepted(),
        [
            from_frontend("http/1.1"),
            from_frontend("h2"),
            from_frontend("http/1.1")
        ]
    );
    assert!(front.refused().is_empty(), "{:?}", front.refused());
}

#[tokio::test]
async fn grpc_unary_and_streaming_calls_over_mesh_tls() {
    let pki = Pki::new();
    let echo = echo::serve().await;
    let front = TlsFront::start(pki.issue("echo").mesh_server_config(), echo).await;
    let services = service("echo", "http2", front.addr, "    tls: { mesh: true }\n");
    let frontend = frontend(&pki, &services).await;

    let mut client = echo::client(frontend.addrs().service("echo").unwrap()).await;
    let reply = client.unary(echo::request("hello")).await.unwrap();
    assert_eq!(reply.into_inner().message, "hello");
    assert_eq!(
        echo::stream_to_end(&mut client, "5").await,
        (5, tonic::Code::Ok)
    );
    let (received, code) = echo::stream_to_end(&mut client, "fail:2").await;
    assert_eq!((received, code), (2, tonic::Code::NotFound));
    assert_eq!(front.accepted(), [from_frontend("h2")]);
}

#[tokio::test]
async fn a_websocket_upgrade_works_over_mesh_tls() {
    let pki = Pki::new();
    let upstream = crate::websocket::websocket_echo().await;
    let front = TlsFront::start(pki.issue("chat").mesh_server_config(), upstream).await;
    let services = service("chat", "http1", front.addr, "    tls: { mesh: true }\n");
    let frontend = frontend(&pki, &services).await;

    let stream = TcpStream::connect(frontend.addrs().service("chat").unwrap())
        .await
        .unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async("ws://chat/", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        socket.send(Message::text(format!("m{i}"))).await.unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply, Message::text(format!("echo:m{i}")));
    }
    socket.close(None).await.unwrap();
    assert_eq!(front.accepted(), [from_frontend("http/1.1")]);
}

#[tokio::test]
async fn a_server_of_another_identity_is_refused_before_the_app_sees_anything() {
    let pki = Pki::new();
    let (app, log) = recording("payments").await;
    let front = TlsFront::start(pki.issue("payments").mesh_server_config(), app).await;
    let services = service("orders", "http1", front.addr, "    tls: { mesh: true }\n");
    let frontend = frontend(&pki, &services).await;

    let (status, headers, body) = get(&url(&frontend, "orders", "/pay")).await;
    assert_eq!(status, 502);
    assert_eq!(headers["x-remora-error"], "connect-failure");
    let expected = format!(
        "server identity {} is not the expected {}",
        spiffe("payments"),
        spiffe("orders")
    );
    assert!(body.contains(&expected), "{body}");
    assert_eq!(log.len(), 0, "the app never sees the request");
    let admin = frontend.addrs().admin.unwrap();
    let counted = "remora_requests_total{direction=\"outbound\",service=\"orders\",route=\"default\",status=\"502\",grpc_code=\"\",classification=\"failure\"}";
    assert_eq!(metric(admin, counted).await, 1.0);
}

#[tokio::test]
async fn a_reload_that_adds_a_tls_block_moves_new_calls_to_tls() {
    let pki = Pki::new();
    let (secure, _) = recording("tls").await;
    let (plain, _) = recording("plain").await;
    let config = pki.issue("orders").mesh_server_config();
    let front = TlsFront::permissive(config, secure, plain).await;
    let yaml = |extra: &str| {
        format!(
            "service: frontend\nadmin: {{ listen: 127.0.0.1:0 }}\ntls: {}\nservices:\n{}",
            pki.issue("frontend").yaml(),
            service("orders", "http1", front.addr, extra)
        )
    };
    let frontend = sidecar(&yaml("")).await;
    assert_eq!(
        get(&url(&frontend, "orders", "/")).await.1["x-upstream"],
        "plain"
    );

    let config = remora::build::parse("test.yaml", &yaml("    tls: { mesh: true }\n")).unwrap();
    frontend.handle().reload(config).await.unwrap();
    assert_eq!(
        get(&url(&frontend, "orders", "/")).await.1["x-upstream"],
        "tls"
    );
    assert_eq!(
        front.accepted(),
        [Accepted::Plaintext, from_frontend("http/1.1")]
    );
}

#[tokio::test]
async fn a_server_of_another_ca_is_refused_as_unknown() {
    let (pki, other) = (Pki::new(), Pki::new());
    let (app, log) = recording("orders").await;
    let front = TlsFront::start(other.issue("orders").mesh_server_config(), app).await;
    let services = service("orders", "http2", front.addr, "    tls: { mesh: true }\n");
    let frontend = frontend(&pki, &services).await;

    let (status, _, body) = get(&url(&frontend, "orders", "/")).await;
    assert_eq!(status, 502);
    assert!(body.contains("unknown CA"), "{body}");
    assert_eq!(log.len(), 0);
}

#[tokio::test]
async fn plaintext_and_tls_connections_to_one_address_never_mix() {
    let pki = Pki::new();
    let (secure, secure_log) = recording("tls").await;
    let (plain, plain_log) = recording("plain").await;
    let config = pki.issue("orders").mesh_server_config();
    let front = TlsFront::permissive(config, secure, plain).await;
    let named = "    tls: { mesh: true, identity: orders }\n";
    let services = [
        service("orders", "http1", front.addr, "    tls: { mesh: true }\n"),
        service("orders-plain", "http1", front.addr, ""),
        service("orders-h2", "http2", front.addr, named),
        service("orders-h2c", "http2", front.addr, ""),
    ];
    let frontend = frontend(&pki, &services.concat()).await;

    for _ in 0..4 {
        for (name, expected) in [
            ("orders", "tls"),
            ("orders-plain", "plain"),
            ("orders-h2", "tls"),
            ("orders-h2c", "plain"),
        ] {
            let (status, headers, _body) = get(&url(&frontend, name, "/")).await;
            assert_eq!(status, 200, "{name}: {_body}");
            assert_eq!(headers["x-upstream"], expected, "{name}");
        }
    }
    assert_eq!((secure_log.len(), plain_log.len()), (8, 8));
    let accepted = front.accepted();
    let tls = accepted
        .iter()
        .filter(|a| **a != Accepted::Plaintext)
        .count();
    // Two services of the same TLS settings still have pools of their own (one TLS
    // config each), and each pool kept its one connection.
    assert_eq!((tls, accepted.len() - tls), (2, 2), "{accepted:?}");
}

#[tokio::test]
async fn external_tls_with_a_ca_file_and_a_server_name() {
    let pki = Pki::new();
    let (app, log) = recording("api").await;
    let front = TlsFront::start(pki.issue("api").server_config(), app).await;
    let ca = pki.bundle();
    let block = |name: &str| format!("    tls: {{ ca: {}, server_name: {name} }}\n", ca.display());
    let services = [
        service("api", "http1", front.addr, &block("api")),
        service("api-h2", "http2", front.addr, &block("api")),
        service("api-wrong-name", "http1", front.addr, &block("elsewhere")),
    ];
    let sidecar = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nservices:\n{}",
        services.concat()
    ))
    .await;

    let (status, _, body) = get(&url(&sidecar, "api", "/v1")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "echo:/v1"));
    let (status, _, _) = get(&url(&sidecar, "api-h2", "/v2")).await;
    assert_eq!(status, 200);
    let (status, _, body) = get(&url(&sidecar, "api-wrong-name", "/v3")).await;
    assert_eq!(status, 502);
    assert!(body.contains("TLS handshake"), "{body}");
    assert!(body.contains("elsewhere"), "{body}");
    assert_eq!(log.len(), 2);
    let anonymous = |alpn: &str| Accepted::Tls {
        alpn: Some(alpn.to_string()),
        peer: None,
    };
    assert_eq!(front.accepted(), [anonymous("http/1.1"), anonymous("h2")]);
}

#[tokio::test]
async fn external_tls_presents_a_client_certificate_when_configured() {
    let pki = Pki::new();
    let (app, log) = recording("api").await;
    // The server requires a client certificate of its CA.
    let front = TlsFront::start(pki.issue("api").mesh_server_config(), app).await;
    let client = pki.issue("reporter");
    let ca = pki.bundle();
    let with_cert = format!(
        "    tls: {{ ca: {}, server_name: api, cert: {}, key: {} }}\n",
        ca.display(),
        client.cert.display(),
        client.key.display()
    );
    let without = format!("    tls: {{ ca: {}, server_name: api }}\n", ca.display());
    let services = [
        service("api", "http1", front.addr, &with_cert),
        service("api-anonymous", "http1", front.addr, &without),
    ];
    let sidecar = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\nservices:\n{}",
        services.concat()
    ))
    .await;

    let (status, _, _) = get(&url(&sidecar, "api", "/")).await;
    assert_eq!(status, 200);
    assert_eq!(
        front.accepted(),
        [Accepted::Tls {
            alpn: Some("http/1.1".into()),
            peer: Some(spiffe("reporter")),
        }]
    );
    // Without a certificate the server refuses; under TLS 1.3 the client learns it
    // only after its handshake ends, so the failure may be the connect or the exchange.
    let (status, _, _) = get(&url(&sidecar, "api-anonymous", "/")).await;
    assert_eq!(status, 502);
    assert_eq!(log.len(), 1);
}

#[tokio::test]
async fn external_tls_needs_a_server_name() {
    let pki = Pki::new();
    let yaml = format!(
        "services:\n  api:\n    listen: 127.0.0.1:0\n    endpoints: [127.0.0.1:1]\n    tls: {{ ca: {} }}\n",
        pki.bundle().display()
    );
    let error = remora::build::parse("test.yaml", &yaml)
        .unwrap_err()
        .to_string();
    assert!(error.contains("services.api.tls.server_name"), "{error}");
    assert!(error.contains("needs `server_name`"), "{error}");
    assert!(error.contains("test.yaml:"), "{error}");
}

#[tokio::test]
async fn a_mesh_identity_outside_the_rules_is_refused_with_its_location() {
    let pki = Pki::new();
    let yaml = format!(
        "tls: {}\nservices:\n  api:\n    listen: 127.0.0.1:0\n    endpoints: [127.0.0.1:1]\n    tls: {{ mesh: true, identity: \"spiffe://example.org/ns/a/sa/b\" }}\n",
        pki.issue("frontend").yaml()
    );
    let error = remora::build::parse("test.yaml", &yaml)
        .unwrap_err()
        .to_string();
    assert!(error.contains("services.api.tls.identity"), "{error}");
    assert!(error.contains("more than one segment"), "{error}");
}

/// A `file` registry listing `orders` at `addr`, advertising `claim` as `remora_mtls`.
fn registry_file(pki: &Pki, addr: SocketAddr, claim: Option<&str>) -> std::path::PathBuf {
    let path = pki.path("instances.yaml");
    let metadata = claim.map_or_else(String::new, |id| {
        format!(", metadata: {{ remora_mtls: \"{id}\" }}")
    });
    let text = format!(
        "orders:\n  - {{ address: {}, port: {}{metadata} }}\n",
        addr.ip(),
        addr.port()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A caller discovering `orders` in the file at `path`, with `tls` as its top level.
async fn discovering_caller(path: &std::path::Path, tls: Option<String>) -> remora::Sidecar {
    let tls = tls.map_or_else(String::new, |files| format!("tls: {files}\n"));
    sidecar(&format!(
        "service: frontend\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         {tls}\
         registries:\n  files: {{ file: {{ path: {} }} }}\n\
         services:\n  orders:\n    listen: 127.0.0.1:0\n    discovery: {{ registry: files }}\n",
        path.display()
    ))
    .await
}

async fn orders_status(caller: &remora::Sidecar) -> (u16, String, String) {
    let (status, headers, body) = get(&url(caller, "orders", "/")).await;
    let upstream = headers
        .get("x-upstream")
        .map_or_else(String::new, |v| v.to_str().unwrap().to_string());
    (status.as_u16(), upstream, body)
}

#[tokio::test]
async fn an_advertised_instance_is_called_over_mtls_without_a_tls_block() {
    let pki = Pki::new();
    let (secure, _) = recording("tls").await;
    let (plain, _) = recording("plain").await;
    let front = TlsFront::permissive(pki.issue("orders").mesh_server_config(), secure, plain).await;
    // The claim is not whom the caller expects: it only says "speaks mutual TLS".
    let path = registry_file(&pki, front.addr, Some(&spiffe("somebody-else")));
    let caller = discovering_caller(&path, Some(pki.issue("frontend").yaml())).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            orders_status(&caller).await.0 == 200
        })
        .await
    );
    let (status, upstream, _) = orders_status(&caller).await;
    assert_eq!((status, upstream.as_str()), (200, "tls"));
    assert_eq!(front.accepted(), [from_frontend("http/1.1")]);
    let admin = caller.addrs().admin.unwrap();
    let endpoints = get(&format!("http://{admin}/endpoints")).await.2;
    let shown = format!("\"advertised_mtls\": \"{}\"", spiffe("somebody-else"));
    assert!(endpoints.contains(&shown), "{endpoints}");

    // The entry loses its advertisement: the endpoint is replaced, and plaintext.
    registry_file(&pki, front.addr, None);
    assert!(
        eventually(Duration::from_secs(3), || async {
            orders_status(&caller).await.1 == "plain"
        })
        .await,
        "the endpoint went back to plaintext"
    );
}

#[tokio::test]
async fn a_mesh_service_expects_its_discovery_name_by_default() {
    let pki = Pki::new();
    let (app, log) = recording("orders").await;
    let front = TlsFront::start(pki.issue("orders").mesh_server_config(), app).await;
    let path = registry_file(&pki, front.addr, None);
    // Called `shop` here, discovered as `orders`: the server must be `orders`.
    let caller = sidecar(&format!(
        "service: frontend\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         tls: {}\n\
         registries:\n  files: {{ file: {{ path: {} }} }}\n\
         services:\n  shop:\n    listen: 127.0.0.1:0\n    discovery: {{ registry: files, name: orders }}\n    tls: {{ mesh: true }}\n",
        pki.issue("frontend").yaml(),
        path.display()
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            get(&url(&caller, "shop", "/")).await.0 == 200
        })
        .await
    );
    assert_eq!(front.accepted(), [from_frontend("http/1.1")]);
    assert!(log.len() >= 1);
}

#[tokio::test]
async fn an_advertisement_never_changes_the_identity_expected() {
    let pki = Pki::new();
    let (app, log) = recording("payments").await;
    let front = TlsFront::start(pki.issue("payments").mesh_server_config(), app).await;
    // The registry says the endpoint is `payments`, and it is; but the caller calls
    // `orders`, so it expects `orders`.
    let path = registry_file(&pki, front.addr, Some(&spiffe("payments")));
    let caller = discovering_caller(&path, Some(pki.issue("frontend").yaml())).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            orders_status(&caller).await.0 == 502
        })
        .await
    );
    let (_, _, body) = orders_status(&caller).await;
    assert!(
        body.contains(&spiffe("payments")) && body.contains(&spiffe("orders")),
        "{body}"
    );
    assert_eq!(log.len(), 0);
}

#[tokio::test]
async fn without_credentials_an_advertised_instance_is_called_in_plaintext() {
    let pki = Pki::new();
    let (secure, _) = recording("tls").await;
    let (plain, _) = recording("plain").await;
    let front = TlsFront::permissive(pki.issue("orders").mesh_server_config(), secure, plain).await;
    let path = registry_file(&pki, front.addr, Some(&spiffe("orders")));
    let caller = discovering_caller(&path, None).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            orders_status(&caller).await.0 == 200
        })
        .await
    );
    assert_eq!(orders_status(&caller).await.1, "plain");
    assert_eq!(front.accepted(), [Accepted::Plaintext]);
}

#[tokio::test]
async fn self_registration_advertises_mtls_only_when_the_inbound_speaks_it() {
    let etcd = etcd_harness::Etcd::start().await;
    let endpoint = etcd.endpoint();
    let pki = Pki::new();
    let (app, _) = recording("inventory").await;
    let start = |id: &'static str, tls_mode: &'static str| {
        let files = pki.issue("inventory").yaml();
        let endpoint = endpoint.clone();
        async move {
            let inbound = free_port();
            sidecar(&format!(
                "service: inventory\n\
                 admin: {{ listen: 127.0.0.1:0 }}\n\
                 tls: {files}\n\
                 inbound: {{ listen: 127.0.0.1:{inbound}, app: {app}, tls: {tls_mode} }}\n\
                 registries:\n  main: {{ etcd: {{ endpoints: [{endpoint}] }} }}\n\
                 register: {{ registry: main, address: 127.0.0.1:{inbound}, id: {id}, ttl: 5s, deregister_delay: 10ms }}\n"
            ))
            .await
        }
    };
    let _meshed = start("meshed", "permissive").await;
    let _plain = start("plain", "off").await;

    let registry = EtcdRegistry::new(EtcdConfig::new(vec![endpoint.clone()])).unwrap();
    let mut watch = registry.watch("inventory");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let instances = loop {
        let next = tokio::time::timeout_at(deadline, watch.next()).await;
        let snapshot = next.expect("both registered within 10s").unwrap().unwrap();
        if snapshot.len() == 2 {
            break snapshot;
        }
    };
    let advertised = |id: &str| {
        let instance = instances.iter().find(|i| i.id == id).unwrap();
        instance
            .metadata
            .get(remora::discovery::MTLS_METADATA)
            .cloned()
    };
    assert_eq!(advertised("meshed"), Some(spiffe("inventory")));
    assert_eq!(advertised("plain"), None);
}

#[tokio::test]
async fn a_grpc_caller_refused_by_tls_gets_unavailable() {
    let pki = Pki::new();
    let echo = echo::serve().await;
    let front = TlsFront::start(pki.issue("payments").mesh_server_config(), echo).await;
    let services = service("echo", "http2", front.addr, "    tls: { mesh: true }\n");
    let frontend = frontend(&pki, &services).await;

    let mut client = echo::client(frontend.addrs().service("echo").unwrap()).await;
    let status = client.unary(echo::request("hello")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains(&spiffe("payments")), "{status:?}");
}
