//! Answers a route gives itself, without a backend: a fixed response, or a redirect
//! whose `location` is the request's own URL with the configured parts replaced.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, HOST, LOCATION};
use http::{Request, Response, StatusCode};

use crate::core::body::ProxyBody;

/// A reply that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not a status a response can carry.
    #[error("invalid status {0}: expected 200 to 599")]
    Status(u16),
    /// Not a redirect status.
    #[error("invalid redirect status {0}: expected 301, 302, 303, 307 or 308")]
    RedirectStatus(u16),
    /// Not `http` or `https`.
    #[error("invalid scheme {0:?}: expected `http` or `https`")]
    Scheme(String),
    /// A host, or path, that cannot go in a `location`.
    #[error("invalid {0} {1:?}")]
    Part(&'static str, String),
}

/// What a route answers instead of forwarding.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A fixed answer.
    Direct(DirectResponse),
    /// A redirect.
    Redirect(Redirect),
}

impl Reply {
    /// The answer to `request`.
    pub fn answer<B>(&self, request: &Request<B>) -> Response<ProxyBody> {
        match self {
            Self::Direct(direct) => direct.answer(),
            Self::Redirect(redirect) => redirect.answer(request),
        }
    }
}

/// A fixed status, body and headers.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    status: StatusCode,
    body: Bytes,
    headers: HeaderMap,
}

impl DirectResponse {
    /// The answer `status` with `body` and `headers`.
    pub fn try_new(status: u16, body: Bytes, headers: HeaderMap) -> Result<Self, ReplyError> {
        let status = StatusCode::from_u16(status)
            .ok()
            .filter(|s| (200..600).contains(&s.as_u16()))
            .ok_or(ReplyError::Status(status))?;
        Ok(Self {
            status,
            body,
            headers,
        })
    }

    fn answer(&self) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::full(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

/// A redirect: `location` is the request's URL with each configured part replaced.
#[derive(Debug, Clone)]
pub struct Redirect {
    status: StatusCode,
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
}

impl Redirect {
    /// A redirect with `status` to the request's URL with the given parts replaced.
    pub fn try_new(
        status: u16,
        scheme: Option<String>,
        host: Option<String>,
        port: Option<u16>,
        path: Option<String>,
    ) -> Result<Self, ReplyError> {
        if ![301, 302, 303, 307, 308].contains(&status) {
            return Err(ReplyError::RedirectStatus(status));
        }
        if let Some(scheme) = scheme
            .as_ref()
            .filter(|s| s.as_str() != "http" && s.as_str() != "https")
        {
            return Err(ReplyError::Scheme(scheme.clone()));
        }
        if let Some(host) = host.as_ref().filter(|h| {
            h.is_empty()
                || h.contains(['/', '?', '#', '@', ' '])
                || HeaderValue::from_str(h).is_err()
        }) {
            return Err(ReplyError::Part("host", host.clone()));
        }
        if let Some(path) = path.as_ref().filter(|p| {
            !p.starts_with('/') || p.contains(['?', '#', ' ']) || HeaderValue::from_str(p).is_err()
        }) {
            return Err(ReplyError::Part("path", path.clone()));
        }
        Ok(Self {
            status: StatusCode::from_u16(status).map_err(|_| ReplyError::RedirectStatus(status))?,
            scheme,
            host,
            port,
            path,
        })
    }

    fn answer<B>(&self, request: &Request<B>) -> Response<ProxyBody> {
        let location = self.location(request);
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = self.status;
        if let Ok(location) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(LOCATION, location);
        }
        response
    }

    /// The URL the request is sent to.
    fn location<B>(&self, request: &Request<B>) -> String {
        let uri = request.uri();
        let scheme = self
            .scheme
            .as_deref()
            .or(uri.scheme_str())
            .unwrap_or("http");
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| request.headers().get(HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or_default();
        let (request_host, request_port) = split_port(authority);
        let host = self.host.as_deref().unwrap_or(request_host);
        // A new scheme or host drops the request's port: it belonged to the old one.
        let port = match self.port {
            Some(port) => Some(port.to_string()),
            None if self.scheme.is_none() && self.host.is_none() => {
                request_port.map(str::to_string)
            }
            None => None,
        };
        let path = self.path.as_deref().unwrap_or(uri.path());
        let mut location = format!("{scheme}://{host}");
        if let Some(port) = port {
            location.push(':');
            location.push_str(&port);
        }
        location.push_str(path);
        if let Some(query) = uri.query() {
            location.push('?');
            location.push_str(query);
        }
        location
    }
}

/// `host:80` -> (`host`, `80`); `[::1]:80` -> (`[::1]`, `80`).
fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => {
            (&authority[..colon], Some(&authority[colon + 1..]))
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(redirect: Redirect, uri: &str, host: &str) -> String {
        let request = Request::builder()
            .uri(uri)
            .header(HOST, host)
            .body(())
            .unwrap();
        let response = Reply::Redirect(redirect).answer(&request);
        response.headers()[LOCATION].to_str().unwrap().to_string()
    }

    #[test]
    fn a_redirect_replaces_the_parts_it_names() {
        let to_https = Redirect::try_new(301, Some("https".into()), None, None, None).unwrap();
        assert_eq!(
            location(to_https, "/a?b=1", "shop:8080"),
            "https://shop/a?b=1"
        );
        let moved = Redirect::try_new(308, None, None, None, Some("/new".into())).unwrap();
        assert_eq!(
            location(moved, "/old?x", "shop:8080"),
            "http://shop:8080/new?x"
        );
        let elsewhere =
            Redirect::try_new(302, None, Some("other".into()), Some(9000), None).unwrap();
        assert_eq!(location(elsewhere, "/p", "shop"), "http://other:9000/p");
    }

    #[test]
    fn refuses_what_cannot_be_answered() {
        assert!(Redirect::try_new(200, None, None, None, None).is_err());
        assert!(Redirect::try_new(301, Some("ftp".into()), None, None, None).is_err());
        assert!(Redirect::try_new(301, None, None, None, Some("x".into())).is_err());
        assert!(DirectResponse::try_new(99, Bytes::new(), HeaderMap::new()).is_err());
        assert!(DirectResponse::try_new(204, Bytes::new(), HeaderMap::new()).is_ok());
    }
}
