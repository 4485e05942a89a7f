//! A small HTTP/1.1 client for registries with a REST API (Eureka, Nacos).
//!
//! One base URL (`http(s)://host:port/prefix`), requests answered within a timeout,
//! bodies read up to a bound; over HTTPS the connections come from discovery's
//! [`Connector`] (ALPN `http/1.1`, the registry's `tls` block), which says why a TLS
//! connection closed.

use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::connect::{chain, host_port, Connector, RegistryTls};
use super::DiscoveryError;

/// The largest answer read from a registry.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A registry's base URL and the client that speaks to it.
#[derive(Debug, Clone)]
pub(super) struct RestClient {
    registry: &'static str,
    scheme: &'static str,
    authority: Authority,
    /// The URL's path without its trailing `/` (`/eureka`), or empty.
    prefix: String,
    client: Client<Connector, Full<Bytes>>,
    connector: Connector,
}

/// What the server answered.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) body: Bytes,
}

impl Answer {
    /// Fails on a non-success status, quoting the server's message.
    pub(super) fn success(
        self,
        registry: &'static str,
        what: &str,
    ) -> Result<Self, DiscoveryError> {
        if self.status.is_success() {
            return Ok(self);
        }
        let text = String::from_utf8_lossy(&self.body);
        let text: String = text.trim().chars().take(200).collect();
        Err(DiscoveryError::new(
            registry,
            format!("{what}: {} {text}", self.status),
        ))
    }
}

impl RestClient {
    /// A client of `url` (`http://` or `https://`, with `tls` exactly for `https://`).
    pub(super) fn new(
        registry: &'static str,
        url: &str,
        default_path: &str,
        tls: Option<&RegistryTls>,
    ) -> Result<Self, DiscoveryError> {
        let refuse = |why: &str| DiscoveryError::new(registry, format!("url {url:?}: {why}"));
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| refuse(&e.to_string()))?;
        let scheme = match (uri.scheme_str(), tls) {
            (Some("https"), Some(_)) => "https",
            (Some("http"), None) => "http",
            (Some("http"), Some(_)) => {
                return Err(refuse("plain http, but TLS is configured: write https://"))
            }
            (Some("https"), None) => return Err(refuse("https needs a TLS config")),
            _ => return Err(refuse("write it as http://host:port or https://host:port")),
        };
        let authority = uri.authority().cloned().ok_or_else(|| refuse("no host"))?;
        let prefix = match uri.path().trim_end_matches('/') {
            "" => default_path.to_string(),
            path => path.to_string(),
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let connector = Connector::new(&[host_port(&authority, default_port)], tls, b"http/1.1")
            .map_err(|e| DiscoveryError::new(registry, e))?;
        let client = Client::builder(TokioExecutor::new()).build(connector.clone());
        Ok(Self {
            registry,
            scheme,
            authority,
            prefix,
            client,
            connector,
        })
    }

    /// One request to `prefix + path` (with its query), answered within `timeout`. Errors
    /// name the path without the query.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, String)],
        body: Option<(&'static str, Vec<u8>)>,
        timeout: Duration,
    ) -> Result<Answer, DiscoveryError> {
        // The query stays out of messages: it may carry an access token.
        let shown = path.split('?').next().unwrap_or(path);
        let failed = |message: String| {
            DiscoveryError::new(
                self.registry,
                format!("{method} {}{shown}: {message}", self.prefix),
            )
        };
        let uri = format!("{}://{}{}{path}", self.scheme, self.authority, self.prefix);
        let mut request = Request::builder().method(method.clone()).uri(uri);
        for (name, value) in headers {
            let value = HeaderValue::from_str(value).map_err(|e| failed(e.to_string()))?;
            request = request.header(*name, value);
        }
        let body = match body {
            Some((content_type, body)) => {
                request = request.header(http::header::CONTENT_TYPE, content_type);
                Bytes::from(body)
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|e| failed(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| failed(self.why(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| failed(e.to_string()))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| failed(format!("no answer within {timeout:?}")))?
    }

    /// Why a request failed: `error` and its causes, and over TLS the last connection
    /// error (a refused client certificate shows only as a closed connection).
    fn why(&self, error: &dyn std::error::Error) -> String {
        let mut text = chain(error);
        if let Some(failure) = self.connector.last_failure() {
            text = format!("{text} (TLS connection: {failure})");
        }
        text
    }
}

/// `text` percent-encoded for a query value or a path segment.
pub(super) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_a_default_path_and_refuse_mismatched_tls() {
        let client = RestClient::new("eureka", "http://127.0.0.1:8761", "/eureka", None).unwrap();
        assert_eq!(client.prefix, "/eureka");
        let client = RestClient::new("eureka", "http://e:8761/custom/", "/eureka", None).unwrap();
        assert_eq!(client.prefix, "/custom");
        assert!(RestClient::new("eureka", "127.0.0.1:8761", "/eureka", None).is_err());
        assert!(RestClient::new("eureka", "https://e:8761", "/eureka", None).is_err());
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
