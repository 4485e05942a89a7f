//! The admin listener: liveness, readiness, metrics, the effective config, endpoints.
//!
//! It is plain HTTP/1.1 on its own port, separate from traffic, and keeps answering while
//! the proxy listeners drain so that orchestrators see `/ready` turn false.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::build::state::State;
use crate::core::body::ProxyBody;
use crate::serve::shared::Shared;

/// Serves the admin endpoints on `tcp` until the task is aborted.
pub async fn serve(tcp: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&shared, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(shared: &Shared, request: &Request<Incoming>) -> Response<ProxyBody> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "admin endpoints take GET\n");
    }
    match request.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if shared.draining.load(Ordering::SeqCst) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/ready" => text(StatusCode::OK, "ready\n"),
        "/metrics" => with_type(
            StatusCode::OK,
            shared.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        // Secrets (the Consul token) never leave the process.
        "/config" => {
            let state = shared.state.load();
            let yaml = crate::config::to_yaml(&state.config.redacted());
            with_type(
                StatusCode::OK,
                format!("{}{yaml}", identity_comment(&state)),
                "application/yaml",
            )
        }
        "/endpoints" => with_type(StatusCode::OK, endpoints_json(shared), "application/json"),
        "/breakers" => with_type(StatusCode::OK, breakers_json(shared), "application/json"),
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /live /ready /metrics /config /endpoints /breakers\n",
        ),
    }
}

/// Who this sidecar is in the mesh, as comment lines above the config: the identity its
/// current certificate carries (after rotations, not only at start), the certificate's
/// serial and validity, and the inbound TLS mode. Empty without a `tls` section.
fn identity_comment(state: &State) -> String {
    let Some(mesh) = &state.mesh else {
        return String::new();
    };
    let material = mesh.credentials.current();
    let certificate = material.certificate();
    let identity = material
        .identity()
        .map_or_else(|| "none".to_string(), ToString::to_string);
    format!(
        "# identity: {identity}\n\
         # certificate: serial {}, valid {} to {}\n\
         # inbound tls: {}\n",
        certificate.serial_hex(),
        humantime::format_rfc3339_seconds(certificate.not_before()),
        humantime::format_rfc3339_seconds(certificate.not_after()),
        format!("{:?}", state.inbound_tls).to_lowercase(),
    )
}

#[derive(Serialize)]
struct ServiceEndpoints {
    service: String,
    /// `static`, `static+dns` (a list with names), or `<backend>:<name>`.
    source: String,
    /// True while the registry fails and the last known endpoints serve.
    stale: bool,
    stale_for_seconds: Option<f64>,
    last_error: Option<String>,
    /// True while too few endpoints are ready and the balancer uses all of them.
    panic: bool,
    endpoints: Vec<crate::balance::EndpointView>,
}

fn endpoints_json(shared: &Shared) -> String {
    let state = shared.state.load();
    let mut services: Vec<ServiceEndpoints> = state
        .discovery
        .iter()
        .map(|(name, discovered)| {
            let staleness = discovered.staleness();
            ServiceEndpoints {
                service: name.clone(),
                source: discovered.key.source.label(),
                stale: staleness.is_some(),
                stale_for_seconds: staleness.as_ref().map(|(age, _)| age.as_secs_f64()),
                last_error: staleness.map(|(_, error)| error),
                panic: discovered.endpoints.in_panic(),
                endpoints: discovered.endpoints.views(),
            }
        })
        .collect();
    services.sort_by(|a, b| a.service.cmp(&b.service));
    serde_json::to_string_pretty(&services).unwrap_or_else(|_| "[]".into())
}

fn breakers_json(shared: &Shared) -> String {
    let state = shared.state.load();
    let views: Vec<_> = state
        .breakers
        .iter()
        .flat_map(|source| source.snapshot())
        .collect();
    serde_json::to_string_pretty(&views).unwrap_or_else(|_| "[]".into())
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    with_type(status, body.to_string(), "text/plain; charset=utf-8")
}

fn with_type(status: StatusCode, body: String, content_type: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
