//! The TCP probe: healthy when a connection is accepted. Nothing is sent; the
//! connection is closed at once.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::ProbeError;

/// Connects to `addr` and hangs up.
pub(super) async fn check(addr: SocketAddr) -> Result<(), ProbeError> {
    TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(ProbeError::Connect)
}
