use super::*;
use crate::access::REQUEST_ID;
use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;
use crate::core::labels::Direction;
use http::{Request, Response};

#[test]
fn config_bounds_are_checked() {
    let mut config = TracingConfig {
        sampling_ratio: 1.5,
        ..Default::default()
    };
    assert!(config.validate().is_err());
    config.sampling_ratio = 0.5;
    config.endpoint = Some("localhost:4317".into());
    assert!(config.validate().is_err());
    config.endpoint = Some("https://collector:4317".into());
    let refused = config.validate().unwrap_err().to_string();
    assert!(refused.contains("needs a TLS config"), "{refused}");
    let tls = CollectorTls {
        config: rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        server_name: None,
    };
    config.tls = Some(tls.clone());
    assert!(config.validate().is_ok());
    config.endpoint = Some("http://collector:4317".into());
    let refused = config.validate().unwrap_err().to_string();
    assert!(refused.contains("write https://"), "{refused}");
    config.tls = None;
    config.endpoint = Some("http://127.0.0.1:4318".into());
    config.protocol = OtlpProtocol::HttpProtobuf;
    assert_eq!(
        collector_uri("http://127.0.0.1:4318", OtlpProtocol::HttpProtobuf).unwrap(),
        "http://127.0.0.1:4318/v1/traces"
    );
    assert_eq!(
        collector_uri("http://collector:4318/custom", OtlpProtocol::HttpProtobuf).unwrap(),
        "http://collector:4318/custom"
    );
    assert!(config.validate().is_ok());
}

#[test]
fn error_status_follows_the_conventions() {
    assert!(error_status(503, None, Direction::Inbound, None).is_some());
    assert!(error_status(404, None, Direction::Inbound, None).is_none());
    assert!(error_status(200, Some(5), Direction::Inbound, None).is_none());
    assert!(error_status(200, Some(5), Direction::Outbound, None).is_some());
    assert!(error_status(200, Some(14), Direction::Inbound, None).is_some());
}

#[test]
fn propagate_only_continues_the_callers_trace() {
    let tracing = Tracing::disabled();
    let mut request = Request::builder()
        .uri("/x")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(())
        .unwrap();
    let trace = tracing.start(&mut request, Direction::Inbound);
    let attempt = attempt(&mut request, "127.0.0.1:9".parse().unwrap());
    let sent = request.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{sent}"
    );
    assert!(sent.ends_with("-01"));
    assert!(!sent.contains("b7ad6b7169203331"));
    assert!(request.headers().contains_key(&REQUEST_ID));
    attempt.end(&mut Err(ProxyError::Timeout(
        std::time::Duration::from_secs(1),
    )));
    let (response, end) = trace.finish(Response::new(ProxyBody::empty()));
    assert!(
        end.is_some(),
        "the access log line waits for the end of the body"
    );
    assert!(response.headers().contains_key(&REQUEST_ID));
    // Values new with every call, which HTTP/2's header compression must not index.
    assert!(request.headers()["traceparent"].is_sensitive());
    assert!(request.headers()[&REQUEST_ID].is_sensitive());
    assert!(response.headers()[&REQUEST_ID].is_sensitive());
}

/// A request id the caller sent is passed on as it came, and not indexed by HTTP/2's
/// header compression either.
#[test]
fn a_callers_request_id_is_kept_and_never_indexed() {
    let tracing = Tracing::disabled();
    let mut request = Request::builder()
        .uri("/x")
        .header("x-request-id", "caller-1")
        .body(())
        .unwrap();
    let trace = tracing.start(&mut request, Direction::Inbound);
    assert_eq!(request.headers()[&REQUEST_ID], "caller-1");
    assert!(request.headers()[&REQUEST_ID].is_sensitive());
    let (response, _) = trace.finish(Response::new(ProxyBody::empty()));
    assert_eq!(response.headers()[&REQUEST_ID], "caller-1");
}
