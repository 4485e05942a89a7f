//! Two sidecars in front of two apps, talking mutual TLS to each other: the caller's
//! sidecar originates it (`tls: { mesh: true }`), the callee's inbound is `strict` and
//! admits only the caller. HTTP/1.1, HTTP/2 and gRPC in all four call kinds cross it as
//! they cross plaintext, and the apps on both ends speak plaintext to their sidecars.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};

use crate::support::{self, certs, echo};

/// The caller's sidecar (service `callee` on a dedicated port) and the callee's sidecar
/// (strict inbound to `app`), with certificates of one trust domain.
struct Mesh {
    _certs: tempfile::TempDir,
    caller: remora::Sidecar,
    callee: remora::Sidecar,
}

impl Mesh {
    async fn start(app: SocketAddr) -> Mesh {
        Self::with_service_extra(app, "").await
    }

    /// Like [`Mesh::start`], with `extra` YAML lines (indented 4) in the caller's
    /// service.
    async fn with_service_extra(app: SocketAddr, extra: &str) -> Mesh {
        let certs = certs::issue_mesh("mesh.test", &["caller", "callee"]);
        let tls = |service: &str| {
            let dir = certs.path().display();
            format!(
                "tls:\n  cert: {dir}/{service}.pem\n  key: {dir}/{service}-key.pem\n  bundle: {dir}/ca.pem\n"
            )
        };
        let callee = support::sidecar(&format!(
            "service: callee\n\
             admin: {{ listen: 127.0.0.1:0 }}\n\
             {}\
             inbound:\n  listen: 127.0.0.1:0\n  app: {app}\n  tls: strict\n  allow: [caller]\n",
            tls("callee")
        ))
        .await;
        let inbound = callee.addrs().inbound.unwrap();
        let caller = support::sidecar(&format!(
            "service: caller\n\
             admin: {{ listen: 127.0.0.1:0 }}\n\
             {}\
             services:\n  callee:\n    listen: 127.0.0.1:0\n    endpoints: [{inbound}]\n    tls: {{ mesh: true }}\n{extra}",
            tls("caller")
        ))
        .await;
        Mesh {
            _certs: certs,
            caller,
            callee,
        }
    }

    /// Where the caller's app sends its calls to the callee.
    fn entry(&self) -> SocketAddr {
        self.caller.addrs().service("callee").unwrap()
    }
}

#[tokio::test]
async fn http1_and_h2_cross_mutual_tls_and_the_app_sees_plaintext() {
    let (app, log) = support::recording("callee").await;
    let mesh = Mesh::start(app).await;
    let entry = mesh.entry();

    let (status, headers, body) = support::get(&format!("http://{entry}/h1")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], "callee");
    assert_eq!(body, "echo:/h1");

    let response = support::http2_client()
        .get(format!("http://{entry}/h2").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "echo:/h2");

    // A POST with a body, over the pooled mTLS connection.
    let request = http::Request::post(format!("http://{entry}/post"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let response = support::http1_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);

    // The app got each call in plaintext, in the protocol its caller spoke.
    let seen = log.all();
    let versions: Vec<(String, http::Version)> =
        seen.iter().map(|s| (s.path.clone(), s.version)).collect();
    assert_eq!(
        versions,
        [
            ("/h1".to_string(), http::Version::HTTP_11),
            ("/h2".to_string(), http::Version::HTTP_2),
            ("/post".to_string(), http::Version::HTTP_11),
        ]
    );
    assert_eq!(seen[2].body, "payload");

    // The callee's inbound is strict: the same call in plaintext never reaches the app.
    let inbound = mesh.callee.addrs().inbound.unwrap();
    let raw = support::raw(inbound, b"GET /plain HTTP/1.1\r\nHost: callee\r\n\r\n").await;
    assert!(!raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(log.len(), 3, "the plaintext call reached the app");

    // Each sidecar's /config says who it is.
    let admin = mesh.callee.addrs().admin.unwrap();
    let (_, _, config) = support::get(&format!("http://{admin}/config")).await;
    assert!(
        config.starts_with("# identity: spiffe://mesh.test/callee\n# certificate: serial "),
        "{config}"
    );
    assert!(config.contains("# inbound tls: strict\n"), "{config}");
}

#[tokio::test]
async fn grpc_calls_of_every_kind_cross_mutual_tls() {
    let app = echo::serve().await;
    let mesh = Mesh::start(app).await;
    let mut client = echo::client(mesh.entry()).await;

    let reply = client
        .unary(echo::request("hi"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, "hi");

    let (received, code) = echo::stream_to_end(&mut client, "50").await;
    assert_eq!((received, code), (50, tonic::Code::Ok));

    let outgoing = futures_util::stream::iter(["a", "b", "c"].map(echo::request));
    let reply = client.client_stream(outgoing).await.unwrap().into_inner();
    assert_eq!(reply.message, "a,b,c");

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for word in ["one", "two", "three"] {
        tx.send(echo::request(word)).await.unwrap();
        let reply = replies.next().await.unwrap().unwrap();
        assert_eq!(reply.message, format!("re:{word}"));
    }
    drop(tx);
    assert!(replies.next().await.is_none());
}

/// Active health checks reach a meshed endpoint the way requests do, over mutual TLS:
/// the strict inbound lets them through, and the endpoint stays healthy.
#[tokio::test]
async fn http_health_checks_probe_a_meshed_endpoint_over_mutual_tls() {
    let (app, log) = support::recording("callee").await;
    let checks = "    health_check:\n      http: { path: /healthz }\n      interval: 50ms\n      \
                  timeout: 1s\n      unhealthy_threshold: 1\n";
    let mesh = Mesh::with_service_extra(app, checks).await;
    let admin = mesh.caller.addrs().admin.unwrap();
    let probed = support::eventually(std::time::Duration::from_secs(10), || async {
        log.all()
            .iter()
            .filter(|seen| seen.path == "/healthz")
            .count()
            >= 3
    })
    .await;
    assert!(
        probed,
        "the app saw {:?}",
        log.all().iter().map(|s| &s.path).collect::<Vec<_>>()
    );
    let failed = r#"remora_health_probes_total{service="callee",result="failure"}"#;
    assert_eq!(support::metric_or_zero(admin, failed).await, 0.0);
    let passed = r#"remora_health_probes_total{service="callee",result="success"}"#;
    assert!(support::metric(admin, passed).await >= 3.0);
    let (_, _, endpoints) = support::get(&format!("http://{admin}/endpoints")).await;
    assert!(!endpoints.contains("\"unhealthy\":true"), "{endpoints}");
    let (status, _, _) = support::get(&format!("http://{}/after", mesh.entry())).await;
    assert_eq!(status, 200);
}
