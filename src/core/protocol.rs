//! The protocol a request leaves on, as config names it and the pools use it.

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
}
