//! Names as endpoints: a destination (a service's endpoint, `inbound.app`) written as
//! an IP literal or as a `host:port` name, and the `resolver` section that says how the
//! names are resolved.
//!
//! Only the form is checked here: a name that does not resolve is no config error (the
//! build floor turns a list with names into a DNS-fed discovery source whose set starts
//! empty and stale until the name resolves).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where calls go, as written: an address used as is, or a name DNS resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// `10.0.0.7:8080`, `[::1]:8080`.
    Addr(SocketAddr),
    /// `orders:8080`: every address `host` resolves to, on `port`.
    Name {
        /// A DNS name (letters, digits, `-`, `_`, dots; an optional final dot).
        host: String,
        /// The port of every resolved address.
        port: u16,
    },
}

impl Destination {
    /// The port, written either way.
    pub fn port(&self) -> u16 {
        match self {
            Self::Addr(addr) => addr.port(),
            Self::Name { port, .. } => *port,
        }
    }

    /// The address, when written as one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Addr(addr) => Some(*addr),
            Self::Name { .. } => None,
        }
    }
}

impl From<SocketAddr> for Destination {
    fn from(addr: SocketAddr) -> Self {
        Self::Addr(addr)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => addr.fmt(f),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for Destination {
    type Err = String;

    /// Parses `ip:port` (IPv6 as `[::1]:port`) or `host:port`, quoting a bad value and
    /// saying what is wrong with it.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Addr(addr));
        }
        let invalid = |why: &str| format!("invalid address {text:?}: {why}");
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(invalid(
                "expected `host:port` or `ip:port`, e.g. `orders:8080`, `10.0.0.7:8080` or `[::1]:8080`",
            ));
        };
        let Ok(port) = port.parse::<u16>() else {
            return Err(invalid("the port must be a number from 0 to 65535"));
        };
        if host.starts_with('[') {
            return Err(invalid("not a valid IPv6 address"));
        }
        if host.parse::<IpAddr>().is_ok() || host.contains(':') {
            return Err(invalid(
                "an IPv6 address goes in brackets, e.g. `[::1]:8080`",
            ));
        }
        if is_dotted_numbers(host) {
            return Err(invalid("not a valid IPv4 address"));
        }
        if !is_dns_name(host) {
            return Err(invalid(
                "a host name is letters, digits, `-` and `_` in dot-separated labels of 1 to 63 characters",
            ));
        }
        Ok(Self::Name {
            host: host.to_string(),
            port,
        })
    }
}

/// `10.0.0.300` and the like: meant as an IPv4 address, never a name.
fn is_dotted_numbers(host: &str) -> bool {
    host.contains('.') && host.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// Whether `host` is a DNS name: labels of 1 to 63 letters, digits, `-` or `_`, not
/// starting or ending with `-`, 253 characters at most, an optional final dot.
fn is_dns_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(D::Error::custom)
    }
}

impl Serialize for Destination {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How the names among endpoints and `inbound.app` are resolved. Registries of kind
/// `dns` have settings of their own.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverSection {
    /// The DNS server to ask (UDP, then TCP on truncation); default: the system's
    /// resolver configuration (`/etc/resolv.conf`; Docker's DNS in compose).
    #[serde(default, with = "super::scalar::opt_socket_addr")]
    pub nameserver: Option<SocketAddr>,
    /// Names are resolved again when their records' TTL runs out, within these bounds.
    #[serde(default)]
    pub ttl: TtlBounds,
    /// Time limit of one query.
    #[serde(default = "default_timeout", with = "super::scalar::duration")]
    pub timeout: Duration,
}

/// Bounds on the wait between two resolutions of a name; `min` is also the first retry
/// delay after a failure, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TtlBounds {
    /// A shorter TTL counts as this.
    #[serde(default = "default_min_ttl", with = "super::scalar::duration")]
    pub min: Duration,
    /// A longer TTL counts as this.
    #[serde(default = "default_max_ttl", with = "super::scalar::duration")]
    pub max: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_min_ttl() -> Duration {
    Duration::from_secs(1)
}
/// Docker's DNS answers with a TTL of 10 minutes; a container recreated with a new
/// address is picked up within a minute.
fn default_max_ttl() -> Duration {
    Duration::from_secs(60)
}

impl Default for TtlBounds {
    fn default() -> Self {
        Self {
            min: default_min_ttl(),
            max: default_max_ttl(),
        }
    }
}

impl Default for ResolverSection {
    fn default() -> Self {
        Self {
            nameserver: None,
            ttl: TtlBounds::default(),
            timeout: default_timeout(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(host: &str, port: u16) -> Destination {
        Destination::Name {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn addresses_and_names_parse() {
        let parse = |text: &str| text.parse::<Destination>();
        assert_eq!(
            parse("10.0.0.7:80"),
            Ok(Destination::Addr("10.0.0.7:80".parse().unwrap()))
        );
        assert_eq!(
            parse("[::1]:80"),
            Ok(Destination::Addr("[::1]:80".parse().unwrap()))
        );
        assert_eq!(parse("orders:8080"), Ok(name("orders", 8080)));
        assert_eq!(
            parse(" orders.test.local.:53 "),
            Ok(name("orders.test.local.", 53))
        );
        assert_eq!(parse("my_app-1:80"), Ok(name("my_app-1", 80)));
        assert_eq!(parse("orders:8080").unwrap().to_string(), "orders:8080");
    }

    #[test]
    fn malformed_destinations_say_what_is_wrong() {
        let error = |text: &str| text.parse::<Destination>().expect_err(text);
        assert!(error("orders").contains("expected `host:port`"));
        assert!(error("orders:").contains("the port must be a number"));
        assert!(error("orders:99999").contains("the port must be a number"));
        assert!(error("::1:80").contains("in brackets"));
        assert!(error("[::g]:80").contains("not a valid IPv6"));
        assert!(error("10.0.0.300:80").contains("not a valid IPv4"));
        assert!(error(":80").contains("a host name is"));
        assert!(error("-orders:80").contains("a host name is"));
        assert!(error("or ders:80").contains("a host name is"));
        assert!(error("orders..local:80").contains("a host name is"));
        assert!(error("nope").starts_with("invalid address \"nope\": "));
    }
}
