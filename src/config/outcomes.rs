//! The vocabulary of outcomes: gRPC code names, the failure conditions of `retry_on`
//! and `failure_on`, and the triggers of a fallback's `on`.
//!
//! One word, one meaning, wherever it is accepted (`-` and `_` alike):
//! - what an upstream did: `connect_failure`, `reset`, `5xx`, `gateway_error` (502, 503,
//!   504), an HTTP status (`503`), a gRPC code (`unavailable`);
//! - `try_timeout`: one try ran out of its `per_try_timeout`; `timeout`: the whole call
//!   ran out of its time (a fallback trigger);
//! - what remora decided (fallback triggers): `breaker_open`, `rate_limited`,
//!   `no_endpoint`, `overloaded`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A gRPC status code by name: `unavailable`, `deadline_exceeded` (or `deadline-exceeded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCodeName(pub tonic::Code);

const GRPC_CODES: [(&str, tonic::Code); 17] = [
    ("ok", tonic::Code::Ok),
    ("cancelled", tonic::Code::Cancelled),
    ("unknown", tonic::Code::Unknown),
    ("invalid_argument", tonic::Code::InvalidArgument),
    ("deadline_exceeded", tonic::Code::DeadlineExceeded),
    ("not_found", tonic::Code::NotFound),
    ("already_exists", tonic::Code::AlreadyExists),
    ("permission_denied", tonic::Code::PermissionDenied),
    ("resource_exhausted", tonic::Code::ResourceExhausted),
    ("failed_precondition", tonic::Code::FailedPrecondition),
    ("aborted", tonic::Code::Aborted),
    ("out_of_range", tonic::Code::OutOfRange),
    ("unimplemented", tonic::Code::Unimplemented),
    ("internal", tonic::Code::Internal),
    ("unavailable", tonic::Code::Unavailable),
    ("data_loss", tonic::Code::DataLoss),
    ("unauthenticated", tonic::Code::Unauthenticated),
];

/// The gRPC code named `text` (`_` and `-` alike, case-insensitive).
pub(crate) fn grpc_code(text: &str) -> Option<tonic::Code> {
    let wanted = text.trim().to_ascii_lowercase().replace('-', "_");
    GRPC_CODES
        .iter()
        .find(|(name, _)| *name == wanted)
        .map(|(_, code)| *code)
}

fn grpc_code_name(code: tonic::Code) -> &'static str {
    GRPC_CODES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("unknown", |(name, _)| name)
}

impl<'de> Deserialize<'de> for GrpcCodeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        grpc_code(&text).map(GrpcCodeName).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown gRPC status {text:?}: expected a name like `unavailable`"
            ))
        })
    }
}

impl Serialize for GrpcCodeName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(grpc_code_name(self.0))
    }
}

/// A failure condition of `retry_on` / `failure_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The TCP connection failed.
    ConnectFailure,
    /// The upstream reset the exchange.
    Reset,
    /// A try ran out of its per-try timeout.
    TryTimeout,
    /// 502, 503 or 504.
    GatewayError,
    /// Any 5xx.
    ServerError,
    /// This HTTP status.
    Status(u16),
    /// This gRPC status code.
    Grpc(tonic::Code),
}

impl Condition {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let condition = match text.replace('-', "_").as_str() {
            "connect_failure" => Self::ConnectFailure,
            "reset" => Self::Reset,
            "try_timeout" => Self::TryTimeout,
            "gateway_error" => Self::GatewayError,
            "5xx" => Self::ServerError,
            "timeout" => {
                return Err(
                    "`timeout` is the whole call running out of time (a fallback \
                     trigger); a try that runs out of its per-try timeout is `try_timeout`"
                        .to_string(),
                )
            }
            "upstream_5xx" | "upstream_reset" => {
                return Err(format!(
                    "{text:?} is now `{}`",
                    text.trim_start_matches("upstream_")
                        .trim_start_matches("upstream-")
                ))
            }
            _ => {
                if let Ok(status) = text.parse::<u16>() {
                    return Self::status(status);
                }
                match grpc_code(text) {
                    Some(code) => Self::Grpc(code),
                    None => {
                        return Err(format!(
                            "unknown condition {text:?}: expected `connect_failure`, `reset`, `try_timeout`, \
                             `gateway_error`, `5xx`, an HTTP status like `503`, or a gRPC code like `unavailable`"
                        ))
                    }
                }
            }
        };
        Ok(condition)
    }

    fn status(status: u16) -> Result<Self, String> {
        if (100..=599).contains(&status) {
            Ok(Self::Status(status))
        } else {
            Err(format!("invalid HTTP status {status}: expected 100 to 599"))
        }
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ConditionVisitor;
        impl Visitor<'_> for ConditionVisitor {
            type Value = Condition;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a condition such as `connect_failure`, `5xx`, `503` or `unavailable`")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Condition, E> {
                Condition::parse(text).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Condition, E> {
                Condition::status(u16::try_from(value).unwrap_or(0)).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Condition, E> {
                Condition::status(u16::try_from(value).unwrap_or(0)).map_err(E::custom)
            }
        }
        d.deserialize_any(ConditionVisitor)
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::ConnectFailure => s.serialize_str("connect_failure"),
            Self::Reset => s.serialize_str("reset"),
            Self::TryTimeout => s.serialize_str("try_timeout"),
            Self::GatewayError => s.serialize_str("gateway_error"),
            Self::ServerError => s.serialize_str("5xx"),
            Self::Status(status) => s.serialize_u16(*status),
            Self::Grpc(code) => s.serialize_str(grpc_code_name(*code)),
        }
    }
}

/// A fallback trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackTrigger {
    /// The service's breaker is open.
    BreakerOpen,
    /// The call timed out.
    Timeout,
    /// A rate limit refused the call.
    RateLimited,
    /// No endpoint could take the call.
    NoEndpoint,
    /// The concurrency cap shed the call.
    Overloaded,
    /// The connection to the endpoint failed.
    ConnectFailure,
    /// The upstream answered 5xx.
    Upstream5xx,
    /// The upstream reset the exchange.
    UpstreamReset,
    /// The upstream answered this gRPC status.
    Grpc(tonic::Code),
}

const TRIGGERS: [(&str, FallbackTrigger); 8] = [
    ("breaker_open", FallbackTrigger::BreakerOpen),
    ("timeout", FallbackTrigger::Timeout),
    ("rate_limited", FallbackTrigger::RateLimited),
    ("no_endpoint", FallbackTrigger::NoEndpoint),
    ("overloaded", FallbackTrigger::Overloaded),
    ("connect_failure", FallbackTrigger::ConnectFailure),
    ("5xx", FallbackTrigger::Upstream5xx),
    ("reset", FallbackTrigger::UpstreamReset),
];

impl<'de> Deserialize<'de> for FallbackTrigger {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let wanted = text.trim().replace('-', "_");
        if let Some((_, trigger)) = TRIGGERS.iter().find(|(name, _)| *name == wanted) {
            return Ok(*trigger);
        }
        if let Some(code) = grpc_code(&wanted) {
            return Ok(Self::Grpc(code));
        }
        let renamed = match wanted.as_str() {
            "upstream_5xx" => Some("5xx"),
            "upstream_reset" => Some("reset"),
            "try_timeout" => {
                return Err(de::Error::custom(
                    "a fallback sees the whole call: `timeout` (the call ran out of time); \
                     `try_timeout` is for `retry_on` and `failure_on`",
                ))
            }
            _ => None,
        };
        if let Some(new) = renamed {
            return Err(de::Error::custom(format!("{text:?} is now `{new}`")));
        }
        if let Some(code) = wanted.strip_prefix("grpc:") {
            return Err(de::Error::custom(format!(
                "{text:?}: write the gRPC code alone, as in `retry_on` (`{code}`)"
            )));
        }
        let names: Vec<&str> = TRIGGERS.iter().map(|(name, _)| *name).collect();
        Err(de::Error::custom(format!(
            "unknown fallback trigger {text:?}: expected one of {}, or a gRPC code like \
             `unavailable`",
            names.join(", ")
        )))
    }
}

impl Serialize for FallbackTrigger {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Grpc(code) => s.serialize_str(grpc_code_name(*code)),
            other => {
                let name = TRIGGERS
                    .iter()
                    .find(|(_, t)| t == other)
                    .map_or("unknown", |(name, _)| name);
                s.serialize_str(name)
            }
        }
    }
}
