//! The HTTP probe: `GET <path>` over one fresh HTTP/1.1 connection.
//!
//! The connection is driven inside the probe's own future (no task is spawned), and
//! closed as soon as the response headers are in: the status decides, the body is not
//! read.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{parse_host, parse_path, valid_status_range, ProbeError};
use crate::health::HealthCheckConfigError;
use crate::upstream::UpstreamTls;

/// The `User-Agent` of every HTTP probe, so that upstream logs can tell probes apart.
const PROBE_USER_AGENT: HeaderValue = HeaderValue::from_static("remora-health-check");

/// An HTTP probe with its parts parsed.
#[derive(Debug, Clone)]
pub(crate) struct HttpProbe {
    path: PathAndQuery,
    /// Never empty; each range within 100..=599.
    expected: Vec<RangeInclusive<u16>>,
    host: Option<HeaderValue>,
}

impl HttpProbe {
    /// Parses and checks an HTTP probe's parts.
    pub(super) fn try_new(
        path: &str,
        expected: &[RangeInclusive<u16>],
        host: Option<&str>,
    ) -> Result<Self, HealthCheckConfigError> {
        let path = parse_path(path)?;
        if expected.is_empty() {
            return Err(HealthCheckConfigError::NoExpectedStatuses);
        }
        if let Some(bad) = expected.iter().find(|range| !valid_status_range(range)) {
            return Err(HealthCheckConfigError::StatusRange {
                start: *bad.start(),
                end: *bad.end(),
            });
        }
        let host = host.map(parse_host).transpose()?;
        Ok(Self {
            path,
            expected: expected.to_vec(),
            host,
        })
    }

    /// Asks `addr` (over `tls` when given) for the path; healthy when the status is
    /// expected.
    pub(super) async fn check(
        &self,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        timeout: Duration,
    ) -> Result<(), ProbeError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(ProbeError::Connect)?;
        // Best effort: a probe is one small request either way.
        let _ = stream.set_nodelay(true);
        match tls {
            None => self.exchange(addr, stream).await,
            Some(tls) => {
                let stream = tls.handshake(stream, false, timeout).await?;
                self.exchange(addr, stream).await
            }
        }
    }

    /// The request and its answer over a connected `stream`.
    async fn exchange<S>(&self, addr: SocketAddr, stream: S) -> Result<(), ProbeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(ProbeError::Http)?;
        let mut connection = std::pin::pin!(connection);
        let mut response = std::pin::pin!(sender.send_request(self.request(addr)));
        let response = tokio::select! {
            biased;
            response = &mut response => response.map_err(ProbeError::Http)?,
            ended = &mut connection => {
                // The connection may hand the response over and end in the same poll
                // (`Connection: close`): the response is then ready.
                match response.now_or_never() {
                    Some(response) => response.map_err(ProbeError::Http)?,
                    None => return Err(ended.err().map_or(ProbeError::Closed, ProbeError::Http)),
                }
            }
        };
        let status = response.status().as_u16();
        if self.expected.iter().any(|range| range.contains(&status)) {
            Ok(())
        } else {
            Err(ProbeError::Status(response.status()))
        }
    }

    /// `GET <path>` with `Host`, a recognisable `User-Agent` and `Connection: close`.
    fn request(&self, addr: SocketAddr) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = Uri::from(self.path.clone());
        let headers = request.headers_mut();
        let host = match &self.host {
            Some(host) => Some(host.clone()),
            None => HeaderValue::try_from(addr.to_string()).ok(),
        };
        if let Some(host) = host {
            headers.insert(HOST, host);
        }
        headers.insert(USER_AGENT, PROBE_USER_AGENT);
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_parts() {
        use HealthCheckConfigError::*;
        let ok = [200..=399];
        assert!(matches!(
            HttpProbe::try_new("healthz", &ok, None),
            Err(HttpPath(_))
        ));
        assert!(matches!(
            HttpProbe::try_new("/a b", &ok, None),
            Err(HttpPath(_))
        ));
        assert!(matches!(
            HttpProbe::try_new("/healthz", &[], None),
            Err(NoExpectedStatuses)
        ));
        #[allow(clippy::reversed_empty_ranges)] // the typo being rejected
        let reversed = [300..=200];
        assert!(matches!(
            HttpProbe::try_new("/healthz", &reversed, None),
            Err(StatusRange {
                start: 300,
                end: 200
            })
        ));
        assert!(matches!(
            HttpProbe::try_new("/healthz", &[200..=600], None),
            Err(StatusRange { .. })
        ));
        assert!(matches!(
            HttpProbe::try_new("/healthz", &ok, Some("bad\nhost")),
            Err(HttpHost(_))
        ));
        assert!(HttpProbe::try_new("/healthz?deep=1", &ok, Some("users.internal")).is_ok());
    }

    #[test]
    fn request_names_the_host_and_itself() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let probe = HttpProbe::try_new("/healthz?deep=1", &[200..=299], None).unwrap();
        let request = probe.request(addr);
        assert_eq!(request.uri(), "/healthz?deep=1");
        assert_eq!(request.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(request.headers()[USER_AGENT], "remora-health-check");
        let named = HttpProbe::try_new("/", &[200..=299], Some("users")).unwrap();
        assert_eq!(named.request(addr).headers()[HOST], "users");
    }
}
