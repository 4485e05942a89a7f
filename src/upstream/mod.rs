//! The bottom of every stack: the [`Forward`] service that sends one attempt to one
//! endpoint over remora's own connection pools, and the header hygiene of a hop.
//!
//! - `pool`: [`UpstreamClients`], the per-endpoint pools, how connections are made, and
//!   [`PooledBody`], which gives a connection back when its response body ends;
//! - `http1`: an endpoint's idle HTTP/1.1 keep-alive connections (a LIFO stack) and its
//!   bounded connects;
//! - `pending`: the bounded queue of calls waiting for an endpoint's connection;
//! - `http2`: an endpoint's few multiplexed HTTP/2 connections (least loaded first);
//! - `hygiene`: hop-by-hop headers, `x-forwarded-*`, upgrade requests;
//! - `tls`: TLS origination: [`UpstreamTls`] (a client config per pool, keyed apart from
//!   plaintext) and [`EndpointTls`] (which endpoints of a service are reached over it);
//! - `tcp`: TCP passthrough, [`TcpForward`] (one endpoint per connection, another on a
//!   failed connect) and [`splice`] (the bytes both ways, with an idle timeout).
//!
//! A service's `protocol` decides whether a request leaves over HTTP/1.1 or HTTP/2; its
//! [`EndpointTls`] whether the connection under it is TLS.

mod endpoint_metrics;
mod exchange;
mod http1;
mod http2;
mod hygiene;
mod pending;
mod pool;
mod tcp;
#[cfg(test)]
mod tests;
mod tls;
mod tunnels;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::balance::{Endpoint, EndpointSet};
use crate::core::body::ProxyBody;
use crate::core::call::{AvoidEndpoints, EndpointUsed, TryExpiry};
use crate::core::clock;
use crate::core::error::{ProxyError, Unsent};
use crate::core::protocol::UpstreamProtocol;

pub use endpoint_metrics::{EndpointMetrics, EndpointStats, MAX_ENDPOINTS};
pub use hygiene::{requested_upgrade, set_forwarded, strip_hop_by_hop, ForwardedFor};
pub use pending::PoolMetrics;
use pool::SendError;
pub use pool::{ConnectError, ConnectionCount, PoolConfig, PoolConfigError, UpstreamClients};
pub use tcp::{
    splice, ByteCounters, Connected, FailedReason, SpliceEnd, Spliced, TcpConfig, TcpConfigError,
    TcpConnectError, TcpForward, TcpMetrics, TcpSeries, UpstreamStream,
};
pub use tls::{Advertised, EndpointTls, TlsError, UpstreamTls};
pub use tunnels::{TunnelGuard, Tunnels};

/// Whether a request to a service of `protocol` leaves over HTTP/2, given what the
/// caller spoke.
fn uses_http2(protocol: UpstreamProtocol, caller: Version) -> bool {
    match protocol {
        // A TCP service's HTTP stack is never called: its listener passes bytes through.
        UpstreamProtocol::Http1 | UpstreamProtocol::Tcp => false,
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Auto => caller == Version::HTTP_2,
    }
}

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

/// While a try is in flight: if its future is dropped because its per-try timeout
/// expired, the endpoint's observers are told of a timeout.
struct Unanswered<'a> {
    expiry: Option<TryExpiry>,
    observers: &'a [Arc<dyn EndpointObserver>],
    endpoint: &'a Endpoint,
    started: std::time::Instant,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.expiry.as_ref().is_some_and(TryExpiry::expired) {
            return;
        }
        let timeout = Err(ProxyError::Timeout(Duration::ZERO));
        for observer in self.observers {
            observer.observe(self.endpoint, &timeout, self.started.elapsed());
        }
    }
}

/// The innermost service of a target's stack: one attempt, to one endpoint.
///
/// It picks an endpoint, points the request at it, sends it over the pooled client and
/// relays the answer; an accepted upgrade (101) is spliced into a byte tunnel. The
/// request arrives with its headers already cleaned by the proxy.
#[derive(Clone, Debug)]
pub struct Forward {
    /// Everything it needs, behind one pointer: the stack is cloned per call, and so is
    /// this into the call's future.
    shared: Arc<ForwardShared>,
}

/// What every clone of a [`Forward`] shares.
#[derive(Clone, Debug)]
struct ForwardShared {
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
    /// Which endpoints are reached over TLS.
    tls: EndpointTls,
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
            shared: Arc::new(ForwardShared {
                service,
                endpoints,
                protocol,
                clients,
                observers: Arc::from(Vec::new()),
                tls: EndpointTls::Plaintext,
            }),
        }
    }

    /// Adds observers told of every attempt's outcome.
    pub fn with_observers(mut self, observers: Vec<Arc<dyn EndpointObserver>>) -> Self {
        Arc::make_mut(&mut self.shared).observers = Arc::from(observers);
        self
    }

    /// Reaches the endpoints over TLS as `tls` says (default: plaintext).
    pub fn with_tls(mut self, tls: EndpointTls) -> Self {
        Arc::make_mut(&mut self.shared).tls = tls;
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
        let this = self.shared.clone();
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
                .then(|| ClientUpgrade::of(&mut request));
            // Counted by the sidecar's drain (the caller's proxy service put it there).
            let tunnel_guard = client_upgrade
                .as_ref()
                .and_then(|_| request.extensions().get::<Tunnels>())
                .map(Tunnels::open);
            // The deadline as it stands now, after queueing, backoff and injected delays.
            crate::core::grpc::set_grpc_timeout(&mut request);
            let http2 = uses_http2(this.protocol, request.version());
            let tls = this.tls.of(&endpoint);
            let uri = std::mem::take(request.uri_mut());
            let host = if http2 {
                host_as_authority(request.headers_mut())
            } else {
                None
            };
            let authority = host.as_ref().unwrap_or(&endpoint.authority);
            *request.uri_mut() = absolute_uri(authority, tls.is_some(), uri)?;
            *request.version_mut() = if http2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            let attempt = crate::trace::attempt(&mut request, endpoint.addr); // tracing: try span + inject
            if !http2 {
                to_origin_form(&mut request, &endpoint);
            }

            // Endpoint breakers and outlier ejection see a try that a per-try timeout
            // cuts short (this future dropped) as a timeout of this endpoint.
            let mut unanswered = Unanswered {
                expiry: request.extensions().get::<TryExpiry>().cloned(),
                observers: &this.observers,
                endpoint: &endpoint,
                started: clock::std_now(),
            };
            let pool = this.clients.endpoint(endpoint.addr, tls);
            // Balancing: counts the attempt in flight and samples its RTT at response
            // headers; dropped with this future (timeout, cancel), it still ends.
            let load = this.endpoints.start(&endpoint);
            let result = if http2 {
                let tls = pool.tls.as_deref();
                pool.http2
                    .send(this.clients.pools(), pool.addr, tls, request)
                    .await
            } else {
                let tls = pool.tls.as_deref();
                pool.http1
                    .send(this.clients.pools(), pool.addr, tls, request)
                    .await
            };
            let elapsed = load.finish(result.is_ok());
            unanswered.expiry = None;
            // A call that waited in this sidecar's own pending queue never reached the
            // endpoint: its failure says nothing of the endpoint's health.
            let queued_out = matches!(
                &result,
                Err(SendError::Connect(
                    ConnectError::QueueFull(_) | ConnectError::QueueTimeout(_),
                    _
                ))
            );
            let mut result = result.map_err(|error| {
                let endpoint = endpoint.addr.to_string();
                match error {
                    SendError::Connect(source, unsent) => {
                        this.clients.pools().metrics.record(&this.service, &source);
                        ProxyError::Connect {
                            endpoint,
                            source: source.into(),
                            unsent: Some(Unsent(unsent)),
                        }
                    }
                    SendError::Upstream(source) => ProxyError::Upstream { endpoint, source },
                }
            });
            if !this.observers.is_empty() && !queued_out {
                for observer in this.observers.iter() {
                    observer.observe(&endpoint, &result, elapsed);
                }
            }
            attempt.end(&mut result); // tracing (a gRPC answer: at its trailers)
            let mut response = result?;
            response
                .extensions_mut()
                .insert(EndpointUsed(endpoint.addr, elapsed));

            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(client_upgrade) = client_upgrade {
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client_upgrade, upstream_upgrade, tunnel_guard));
                    return Ok(response.map(|_| ProxyBody::empty()));
                }
            }
            strip_hop_by_hop(response.headers_mut());
            Ok(response)
        })
    }
}

/// `http://<endpoint>/<original path and query>` (`https` over TLS), reusing the
/// original's parts.
fn absolute_uri(
    authority: &http::uri::Authority,
    tls: bool,
    original: Uri,
) -> Result<Uri, ProxyError> {
    let mut parts = original.into_parts();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest(format!("request target: {e}")))
}

/// For a try over HTTP/2: the caller's `Host`, taken out of the headers to become the
/// request's `:authority`, as an HTTP/1.1 upstream would have got it in `Host`. An
/// HTTP/2 server may refuse a request whose `Host` names another authority than its
/// `:authority` (RFC 9113, 8.3.1), and would otherwise see the endpoint's address in
/// `:authority`. `None` when the caller named no host, or one that is no authority
/// (the endpoint's address is sent then).
fn host_as_authority(headers: &mut http::HeaderMap) -> Option<http::uri::Authority> {
    let host = headers.remove(header::HOST)?;
    http::uri::Authority::try_from(host.as_bytes()).ok()
}

/// Turns an HTTP/1.1 request's target into origin form (`/path?query`), and names the
/// endpoint in `Host` when the caller named no host at all.
fn to_origin_form(request: &mut Request<ProxyBody>, endpoint: &Endpoint) {
    let uri = std::mem::take(request.uri_mut());
    let mut parts = uri.into_parts();
    parts.scheme = None;
    parts.authority = None;
    *request.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    if !request.headers().contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(endpoint.authority.as_str()) {
            request.headers_mut().insert(header::HOST, host);
        }
    }
}

/// The caller's side of an upgrade: its connection once the `101` is written to it.
enum ClientUpgrade {
    /// A caller remora serves itself (HTTP/1.1).
    Own(Option<tokio::sync::oneshot::Receiver<crate::core::http1::Upgraded>>),
    /// A caller hyper serves (TLS without ALPN).
    Hyper(hyper::upgrade::OnUpgrade),
}

impl ClientUpgrade {
    /// The upgrade `request`'s caller asked for.
    fn of<B>(request: &mut Request<B>) -> Self {
        match request.extensions().get::<crate::core::http1::OnUpgrade>() {
            Some(upgrade) => Self::Own(upgrade.take()),
            None => Self::Hyper(hyper::upgrade::on(request)),
        }
    }

    /// The caller's connection, once upgraded.
    async fn connection(self) -> Result<Box<dyn Io>, crate::core::body::BoxError> {
        match self {
            Self::Own(Some(receiver)) => Ok(Box::new(receiver.await?)),
            Self::Own(None) => Err("the upgrade was taken by another try".into()),
            Self::Hyper(upgrade) => Ok(Box::new(TokioIo::new(upgrade.await?))),
        }
    }
}

/// A connection's byte stream, either way.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Copies bytes both ways between an upgraded client and upstream connection.
async fn tunnel(
    client: ClientUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    mut guard: Option<TunnelGuard>,
) {
    let upstream = async { upstream.await.map_err(crate::core::body::BoxError::from) };
    let (mut client, upstream) = match tokio::try_join!(client.connection(), upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let mut upstream = TokioIo::new(upstream);
    let closing = async {
        match guard.as_mut() {
            Some(guard) => guard.closing().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(error) = copied {
                tracing::debug!(%error, "upgraded connection ended");
            }
        }
        () = closing => tracing::debug!("upgraded connection closed: drain timeout"),
    }
}
