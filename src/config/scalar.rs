//! Text forms of socket addresses and durations, with errors that quote the bad value.
//!
//! serde's own `SocketAddr` impl says only "invalid socket address syntax", and
//! `humantime_serde` reports a bad duration at its key; these helpers parse from a
//! string so the error names the value and points at it. Used through
//! `#[serde(with = "...")]` in the schema.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

/// A socket address parsed from YAML text.
struct AddrText(SocketAddr);

impl<'de> Deserialize<'de> for AddrText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_socket_addr(&text)
            .map(AddrText)
            .map_err(D::Error::custom)
    }
}

/// Parses `ip:port` (IPv6 as `[::1]:port`), explaining what a bad value lacks.
pub(crate) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        let hint = if text.rsplit_once(':').is_some_and(|(host, _)| {
            host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('[')
        }) {
            "an IP address is needed here, not a host name"
        } else {
            "expected `ip:port`, e.g. `127.0.0.1:8080` or `[::1]:8080`"
        };
        format!("invalid socket address {text:?}: {hint}")
    })
}

/// `SocketAddr` fields.
pub(crate) mod socket_addr {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        AddrText::deserialize(d).map(|addr| addr.0)
    }

    pub(crate) fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(addr)
    }
}

/// `Option<SocketAddr>` fields.
pub(crate) mod opt_socket_addr {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        Ok(Option::<AddrText>::deserialize(d)?.map(|addr| addr.0))
    }

    pub(crate) fn serialize<S: Serializer>(
        addr: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_none(),
        }
    }
}

/// Parses a humantime duration (`250ms`, `5s`, `1m 30s`), quoting a bad value.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?}: {e} (e.g. `250ms`, `5s`, `1m 30s`)"))
}

/// `Duration` fields, written as humantime text.
pub(crate) mod duration {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(D::Error::custom)
    }

    pub(crate) fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*duration))
    }
}

/// `Option<Duration>` fields, written as humantime text.
pub(crate) mod opt_duration {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => parse_duration(&text).map(Some).map_err(D::Error::custom),
            None => Ok(None),
        }
    }

    pub(crate) fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => s.collect_str(&humantime::format_duration(*duration)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_are_quoted() {
        assert_eq!(
            parse_socket_addr("10.0.0.1:80"),
            Ok(SocketAddr::from(([10, 0, 0, 1], 80)))
        );
        assert!(parse_socket_addr("[::1]:80").is_ok());
        let error = parse_socket_addr("10.0.0.1:").expect_err("no port");
        assert!(
            error.starts_with("invalid socket address \"10.0.0.1:\""),
            "{error}"
        );
        let error = parse_socket_addr("orders:8080").expect_err("a host name");
        assert!(error.contains("not a host name"), "{error}");
    }

    #[test]
    fn durations_parse_and_bad_ones_are_quoted() {
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        let error = parse_duration("5 parsecs").expect_err("not a unit");
        assert!(
            error.starts_with("invalid duration \"5 parsecs\": "),
            "{error}"
        );
        assert!(parse_duration("30").is_err(), "a unit is required");
    }

    #[test]
    fn formatted_durations_parse_back() {
        for duration in [Duration::from_millis(1500), Duration::from_secs(3600 + 61)] {
            let text = humantime::format_duration(duration).to_string();
            assert_eq!(parse_duration(&text), Ok(duration));
        }
    }
}
