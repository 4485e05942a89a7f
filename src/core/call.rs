//! What one call carries through the layers: request and response extensions.
//!
//! The proxy stamps every call with one [`CallInfo`] (one allocation for everything the
//! layers need to know about it; the timeout layer records the call's deadline in it);
//! retry marks the endpoints to avoid; the bottom of the stack says which endpoint
//! answered. The types live on this floor so that every layer can read them without
//! knowing who sets them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

/// Request extension set on every proxied call: one extension (one allocation) for what
/// the layers need to know about the call.
///
/// NOTE: not `Copy` since it holds the peer's identity; cloning it costs a reference
/// count at most (nothing for a plaintext caller).
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// The address of the client connection (rate-limit keys and hashing use it).
    pub client: SocketAddr,
    /// When the call arrived: layers that need the time of the call (the overall
    /// timeout, the retry budget) read it instead of the clock.
    pub arrived: Instant,
    /// When the call must be answered, once the timeout layer set it.
    pub deadline: Option<Instant>,
    /// Whether the caller speaks gRPC (an `application/grpc` content type), looked up
    /// once for every layer that asks.
    pub grpc: bool,
    /// The caller's SPIFFE ID (`spiffe://<trust domain>/<service>`) when it connected
    /// over mutual TLS; read from its certificate once per connection and shared by
    /// every call on it. `None` for a plaintext caller.
    pub peer_identity: Option<Arc<str>>,
}

impl CallInfo {
    /// A call from `client` arriving now, with no deadline yet.
    pub fn new(client: SocketAddr) -> Self {
        Self {
            client,
            arrived: Instant::now(),
            deadline: None,
            grpc: false,
            peer_identity: None,
        }
    }
}

/// Request extension: endpoints this request should not go to if another is ready (set
/// by retry with the endpoints earlier attempts failed on).
#[derive(Debug, Clone, Default)]
pub struct AvoidEndpoints(pub Vec<SocketAddr>);

/// Request extension of an attempt bounded by a per-try timeout: set when that timeout
/// cut the attempt short. The layers below see their future dropped without an outcome;
/// this tells a timeout (a failure of the endpoint) from a caller that went away.
#[derive(Debug, Clone, Default)]
pub struct TryExpiry(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl TryExpiry {
    /// Marks the attempt as cut short by its per-try timeout.
    pub fn expire(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the per-try timeout cut the attempt short.
    pub fn expired(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Response extension: the endpoint that answered, and how long it took to answer (from
/// sending the request to the response head).
#[derive(Debug, Clone, Copy)]
pub struct EndpointUsed(pub SocketAddr, pub std::time::Duration);
