//! The protocol a request leaves on, as config names it and the pools use it; or `tcp`,
//! where there are no requests: the connection's bytes are passed through as they are.

use serde::{Deserialize, Serialize};

/// Protocol toward an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// Whatever the caller spoke.
    #[default]
    Auto,
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    /// Raw TCP passthrough: no HTTP at all, each connection is forwarded whole
    /// (`build/tcp.rs`, `serve/tcp.rs`).
    Tcp,
}

impl UpstreamProtocol {
    /// Whether connections are passed through as raw TCP rather than served as HTTP.
    pub fn is_tcp(self) -> bool {
        self == Self::Tcp
    }
}
