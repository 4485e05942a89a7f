//! Values with a text form of their own: percentages (`50%`), rates (`10/s`) and
//! rate-limit keys (`client_ip`, `header:<name>`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A percentage, written `50%` (or a fraction `0.5`); stored as a fraction in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PercentVisitor;
        impl Visitor<'_> for PercentVisitor {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage like `50%`, or a fraction from 0 to 1")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Percent, E> {
                parse_percent(text).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Percent, E> {
                fraction(value).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Percent, E> {
                fraction(value as f64).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Percent, E> {
                fraction(value as f64).map_err(E::custom)
            }
        }
        d.deserialize_any(PercentVisitor)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}%", self.0 * 100.0))
    }
}

fn fraction(value: f64) -> Result<Percent, String> {
    if (0.0..=1.0).contains(&value) {
        Ok(Percent(value))
    } else {
        Err(format!(
            "invalid fraction {value}: write a percentage like `50%`, or a fraction from 0 to 1"
        ))
    }
}

/// Parses `50%`, `2.5%` or a fraction `0.5`.
pub(crate) fn parse_percent(text: &str) -> Result<Percent, String> {
    let text = text.trim();
    match text.strip_suffix('%') {
        Some(number) => match number.trim().parse::<f64>() {
            Ok(value) if (0.0..=100.0).contains(&value) => Ok(Percent(value / 100.0)),
            _ => Err(format!("invalid percentage {text:?}: expected 0% to 100%")),
        },
        None => text
            .parse::<f64>()
            .map_err(|_| format!("invalid percentage {text:?}: write it like `50%`"))
            .and_then(fraction),
    }
}

/// A rate: `count` calls per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Calls.
    pub count: u32,
    /// Per this long.
    pub per: Duration,
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_rate(&text).map_err(de::Error::custom)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let per = match self.per.as_secs() {
            1 if self.per.subsec_nanos() == 0 => "s".to_string(),
            60 if self.per.subsec_nanos() == 0 => "m".to_string(),
            3600 if self.per.subsec_nanos() == 0 => "h".to_string(),
            _ => humantime::format_duration(self.per).to_string(),
        };
        s.collect_str(&format_args!("{}/{per}", self.count))
    }
}

/// Parses `10/s`, `600/m`, `1000/h`, `5/100ms`.
pub(crate) fn parse_rate(text: &str) -> Result<Rate, String> {
    let bad = || {
        format!("invalid rate {text:?}: expected calls per period, e.g. `10/s`, `600/m`, `5/100ms`")
    };
    let (count, per) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let per = match per.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        other => humantime::parse_duration(other).map_err(|_| bad())?,
    };
    if count == 0 || per.is_zero() {
        return Err(format!(
            "invalid rate {text:?}: both the count and the period must be above zero"
        ));
    }
    Ok(Rate { count, per })
}

/// What a rate limit keys on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RateLimitKeyName {
    /// One bucket for all callers.
    #[default]
    Global,
    /// One bucket per client IP.
    ClientIp,
    /// One bucket per value of this header.
    Header(String),
}

impl<'de> Deserialize<'de> for RateLimitKeyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "global" => Ok(Self::Global),
            "client_ip" => Ok(Self::ClientIp),
            other => match other.strip_prefix("header:") {
                Some(name) if http::HeaderName::from_bytes(name.trim().as_bytes()).is_ok() => {
                    Ok(Self::Header(name.trim().to_ascii_lowercase()))
                }
                _ => Err(de::Error::custom(format!(
                    "invalid rate limit key {text:?}: expected `global`, `client_ip` or `header:<name>`"
                ))),
            },
        }
    }
}

impl Serialize for RateLimitKeyName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Global => s.serialize_str("global"),
            Self::ClientIp => s.serialize_str("client_ip"),
            Self::Header(name) => s.collect_str(&format_args!("header:{name}")),
        }
    }
}
