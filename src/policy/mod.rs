//! The per-service middleware stack, assembled from config.
//!
//! Every service's requests pass through one [`ServiceStack`]: a type-erased tower
//! service built once per config and cloned per request. Its innermost service is
//! [`Forward`](crate::upstream::Forward); resilience policies wrap it in the order
//! DESIGN.md gives (rate limit, fallback, timeout, retry, breaker, balancer).

pub mod backoff;
pub mod budget;
pub mod circuit_breaker;
pub mod concurrency;
pub mod fallback;
pub mod fault;
pub mod outcome;
pub mod rate_limit;
pub mod retry;
pub mod timeout;

use std::sync::Arc;

use http::{Request, Response};
use tower::util::BoxCloneSyncService;

use crate::balance::EndpointSet;
use crate::body::ProxyBody;
use crate::config::UpstreamProtocol;
use crate::error::ProxyError;
use crate::upstream::{Forward, UpstreamClients};

/// A service's whole stack, type-erased.
pub type ServiceStack = BoxCloneSyncService<Request<ProxyBody>, Response<ProxyBody>, ProxyError>;

/// Builds the stack of one service.
pub fn build(
    service: Arc<str>,
    endpoints: Arc<EndpointSet>,
    protocol: UpstreamProtocol,
    clients: UpstreamClients,
) -> ServiceStack {
    BoxCloneSyncService::new(Forward::new(service, endpoints, protocol, clients))
}
