//! The gRPC probe: `grpc.health.v1.Health/Check` over one fresh h2c connection, with the
//! client types of the `tonic-health` crate.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::ProbeError;

/// Asks `addr` whether `service` (the server, when empty) is serving.
pub(super) async fn check(
    addr: SocketAddr,
    service: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(ProbeError::GrpcTransport)?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(ProbeError::GrpcTransport)?;
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
