//! Pooled connections to upstream endpoints, the [`Forward`] service at the bottom of
//! every stack, and the header hygiene of a forwarded hop.
//!
//! Two hyper clients share every endpoint: one speaking HTTP/1.1 (a pool of keep-alive
//! connections per endpoint), one speaking HTTP/2 with prior knowledge (one multiplexed
//! connection per endpoint). A service's `protocol` decides which one a request takes.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::balance::{Endpoint, EndpointSet};
use crate::body::ProxyBody;
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::error::ProxyError;

/// A pooled hyper client.
pub type HttpClient = Client<HttpConnector, ProxyBody>;

/// The clients every service's requests go through.
#[derive(Clone, Debug)]
pub struct UpstreamClients {
    http1: HttpClient,
    http2: HttpClient,
}

impl UpstreamClients {
    /// Clients with `config`'s connect timeout and pool limits.
    pub fn new(config: &UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_keepalive(Some(std::time::Duration::from_secs(60)));

        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_endpoint);
        let http1 = builder.build(connector.clone());
        // NOTE: fixed, large windows rather than the adaptive window. Besides flow
        // control, h2 budgets small unread DATA frames per connection at half the
        // connection window; with hundreds of gRPC streams multiplexed on one upstream
        // connection, each holding one small unread message, a small window makes h2
        // tear the connection down ("too_many_data_frames"). Windows are credit, not
        // memory: nothing is allocated until a peer sends.
        builder
            .http2_only(true)
            .http2_initial_stream_window_size(1024 * 1024)
            .http2_initial_connection_window_size(16 * 1024 * 1024)
            .http2_keep_alive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keep_alive_while_idle(false);
        let http2 = builder.build(connector);
        Self { http1, http2 }
    }

    /// The client and request version for `protocol`, given what the caller spoke.
    pub fn select(&self, protocol: UpstreamProtocol, caller: Version) -> (&HttpClient, Version) {
        let use_http2 = match protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Auto => caller == Version::HTTP_2,
        };
        if use_http2 {
            (&self.http2, Version::HTTP_2)
        } else {
            (&self.http1, Version::HTTP_11)
        }
    }
}

/// Request extension: endpoints this request should not go to if another is ready (set
/// by retry with the endpoints earlier attempts failed on).
#[derive(Debug, Clone, Default)]
pub struct AvoidEndpoints(pub Vec<SocketAddr>);

/// Response extension: the endpoint that answered.
#[derive(Debug, Clone, Copy)]
pub struct EndpointUsed(pub SocketAddr);

/// Sees the outcome of every attempt on an endpoint (endpoint circuit breakers, outlier
/// ejection and latency tracking implement it). Called on the request path: it must
/// not block.
pub trait EndpointObserver: Send + Sync + 'static {
    /// One attempt on `endpoint` ended with `result` (at response headers) after `elapsed`.
    fn observe(
        &self,
        endpoint: &Endpoint,
        result: &Result<Response<ProxyBody>, ProxyError>,
        elapsed: Duration,
    );
}

/// The innermost service of a target's stack: one attempt, to one endpoint.
///
/// It picks an endpoint, points the request at it, sends it over the pooled client and
/// relays the answer; an accepted upgrade (101) is spliced into a byte tunnel. The
/// request arrives with its headers already cleaned by the proxy.
#[derive(Clone, Debug)]
pub struct Forward {
    /// The service's name, for errors.
    service: Arc<str>,
    /// Where to send.
    endpoints: Arc<EndpointSet>,
    /// Protocol toward the endpoints.
    protocol: UpstreamProtocol,
    /// The pooled clients.
    clients: UpstreamClients,
    /// Told of every attempt's outcome.
    observers: Arc<[Arc<dyn EndpointObserver>]>,
}

impl std::fmt::Debug for dyn EndpointObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointObserver")
    }
}

impl Forward {
    /// A forwarder to `endpoints` over `clients`.
    pub fn new(
        service: Arc<str>,
        endpoints: Arc<EndpointSet>,
        protocol: UpstreamProtocol,
        clients: UpstreamClients,
    ) -> Self {
        Self {
            service,
            endpoints,
            protocol,
            clients,
            observers: Arc::from(Vec::new()),
        }
    }

    /// Adds observers told of every attempt's outcome.
    pub fn with_observers(mut self, observers: Vec<Arc<dyn EndpointObserver>>) -> Self {
        self.observers = Arc::from(observers);
        self
    }
}

impl tower::Service<Request<ProxyBody>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<ProxyBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // Balancing: only a consistent-hash balancer reads a key from the request;
            // retries name the endpoints that failed so the pick prefers others.
            let key = this.endpoints.hash_key(&request);
            let avoid = request
                .extensions()
                .get::<AvoidEndpoints>()
                .map_or(&[][..], |AvoidEndpoints(avoid)| avoid);
            let endpoint = this
                .endpoints
                .pick_for(key, avoid)
                .ok_or_else(|| ProxyError::NoHealthyEndpoint(this.service.to_string()))?;
            let client_upgrade = request
                .headers()
                .contains_key(header::UPGRADE)
                .then(|| hyper::upgrade::on(&mut request));
            // The deadline as it stands now, after queueing, backoff and injected delays.
            crate::policy::timeout::set_grpc_timeout(&mut request);
            let (client, version) = this.clients.select(this.protocol, request.version());
            *request.uri_mut() = upstream_uri(&endpoint.authority, request.uri())?;
            *request.version_mut() = version;
            let attempt = crate::trace::attempt(&mut request, endpoint.addr); // tracing: try span + inject

            let started = Instant::now();
            // Balancing: counts the attempt in flight and samples its RTT at response
            // headers; dropped with this future (timeout, cancel), it still ends.
            let load = this.endpoints.start(&endpoint);
            let result = client.request(request).await;
            load.finish(result.is_ok());
            let result = result
                .map(|response| response.map(ProxyBody::streamed))
                .map_err(|error| {
                    let endpoint = endpoint.addr.to_string();
                    if error.is_connect() {
                        ProxyError::Connect {
                            endpoint,
                            source: error.into(),
                        }
                    } else {
                        ProxyError::Upstream {
                            endpoint,
                            source: error.into(),
                        }
                    }
                });
            for observer in this.observers.iter() {
                observer.observe(&endpoint, &result, started.elapsed());
            }
            attempt.end(&result); // tracing
            let mut response = result?;
            response
                .extensions_mut()
                .insert(EndpointUsed(endpoint.addr));

            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(client_upgrade) = client_upgrade {
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
                    return Ok(response.map(|_| ProxyBody::empty()));
                }
            }
            strip_hop_by_hop(response.headers_mut());
            Ok(response)
        })
    }
}

/// `http://<endpoint>/<original path and query>`.
fn upstream_uri(authority: &http::uri::Authority, original: &Uri) -> Result<Uri, ProxyError> {
    let path = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))
}

/// Copies bytes both ways between an upgraded client and upstream connection.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%error, "upgraded connection ended");
    }
}

/// Headers that describe one connection and must not be forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, those the `Connection` header names among them.
/// `TE: trailers` survives (gRPC needs it); any other `TE` is dropped.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(te) = headers.get(header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            headers.remove(header::TE);
        }
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` + `Upgrade`).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Appends the caller's address to `x-forwarded-for` and sets `x-forwarded-proto`.
pub fn set_forwarded(headers: &mut HeaderMap, client: IpAddr) {
    static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    let value = match headers.get(&XFF).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {client}"),
        None => client.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(&XFF, value);
    }
    if !headers.contains_key(&XFP) {
        headers.insert(&XFP, HeaderValue::from_static("http"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "close, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "x-kept"]);
    }

    #[test]
    fn drops_te_other_than_trailers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, "gzip".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn forwarded_for_appends() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        set_forwarded(&mut headers, "127.0.0.1".parse().unwrap());
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn detects_upgrade_requests() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert_eq!(requested_upgrade(&headers).unwrap(), "websocket");
        headers.remove(header::CONNECTION);
        assert!(requested_upgrade(&headers).is_none());
    }
}
