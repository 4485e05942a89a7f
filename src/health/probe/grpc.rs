//! The gRPC probe: `grpc.health.v1.Health/Check` over one fresh h2c connection, with the
//! client types of the `tonic-health` crate.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::ProbeError;
use crate::upstream::UpstreamTls;

/// Asks `addr` (over `tls` when given, ALPN `h2`) whether `service` (the server, when
/// empty) is serving.
pub(super) async fn check(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    service: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(ProbeError::GrpcTransport)?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = match tls {
        None => endpoint
            .connect()
            .await
            .map_err(ProbeError::GrpcTransport)?,
        Some(tls) => {
            // The channel's one connection: TCP, then the handshake requests make.
            let stream = TcpStream::connect(addr)
                .await
                .map_err(ProbeError::Connect)?;
            let stream = tls.handshake(stream, true, timeout).await?;
            let mut stream = Some(stream);
            let connector = tower::service_fn(move |_: http::Uri| {
                let stream = stream.take();
                async move {
                    stream
                        .map(TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("a probe's channel connects once"))
                }
            });
            endpoint
                .connect_with_connector(connector)
                .await
                .map_err(ProbeError::GrpcTransport)?
        }
    };
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(ProbeError::Grpc)?;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(ProbeError::NotServing(other.as_str_name())),
    }
}
