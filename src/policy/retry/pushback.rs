//! What a failed answer says about retrying it: `grpc-retry-pushback-ms` (the gRPC retry
//! design, A6) or `Retry-After` in seconds.

use std::time::Duration;

use http::header::{HeaderName, RETRY_AFTER};
use http::{HeaderMap, Response};

use crate::core::body::ProxyBody;
use crate::core::error::ProxyError;

/// gRPC server pushback: milliseconds to wait before retrying; negative or malformed
/// means "do not retry".
static GRPC_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// What a failed attempt's answer says about retrying.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerDelay {
    /// Nothing: the backoff applies.
    Unspecified,
    /// Wait this long (`grpc-retry-pushback-ms`, or `Retry-After` in seconds).
    After(Duration),
    /// Do not retry (negative or malformed pushback).
    Refused,
}

/// What `result` asks of a retry: errors ask nothing.
pub(super) fn server_delay(result: &Result<Response<ProxyBody>, ProxyError>) -> ServerDelay {
    match result {
        Ok(response) => asked(response.headers()),
        Err(_) => ServerDelay::Unspecified,
    }
}

pub(crate) fn asked(headers: &HeaderMap) -> ServerDelay {
    if let Some(pushback) = headers.get(&GRPC_PUSHBACK) {
        return match pushback.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(ms) => ServerDelay::After(Duration::from_millis(ms)),
            None => ServerDelay::Refused,
        };
    }
    // An HTTP-date Retry-After is ignored: the backoff applies.
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(ServerDelay::Unspecified, |s| {
            ServerDelay::After(Duration::from_secs(s))
        })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn pushback_and_retry_after_are_read_and_pushback_wins() {
        let cases: &[(&[(&str, &str)], ServerDelay)] = &[
            (&[], ServerDelay::Unspecified),
            (
                &[("grpc-retry-pushback-ms", "300")],
                ServerDelay::After(Duration::from_millis(300)),
            ),
            (&[("grpc-retry-pushback-ms", "-1")], ServerDelay::Refused),
            (&[("grpc-retry-pushback-ms", "soon")], ServerDelay::Refused),
            (
                &[("retry-after", " 2 ")],
                ServerDelay::After(Duration::from_secs(2)),
            ),
            (
                &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")],
                ServerDelay::Unspecified,
            ),
            (
                &[("retry-after", "5"), ("grpc-retry-pushback-ms", "10")],
                ServerDelay::After(Duration::from_millis(10)),
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(asked(&headers(pairs)), *expected, "{pairs:?}");
        }
    }
}
