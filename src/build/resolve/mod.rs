//! Each YAML section -> the typed settings of the mechanism it configures.
//!
//! These conversions run the mechanisms' own constructors (`try_new`), so a value a
//! mechanism refuses is refused here, once, with the field it came from: a
//! [`BuildError`] names the field below the section it converts, and the caller that
//! knows where the section sits (validation, the state builder) puts it in place. No
//! mechanism sees YAML, and nothing here builds a layer.

mod authorize;
mod discovery;
mod policies;
mod routes;
mod tcp;
mod tls;
mod tracing;

use std::fmt;

use crate::config::FieldPath;

pub use authorize::{authorization, route_matcher};
pub use discovery::{
    balancer, hash_key, health_check, outlier, pool, registration, registry, registry_backend,
    resolver,
};
pub use policies::{
    breaker, conditions, fallback, fault, max_in_flight, rate_limit, retry, timeout, NONE,
};
pub use routes::{route_action, route_match};
pub use tcp::tcp;
pub use tls::{endpoint_tls, external_tls, mesh_credentials, sole_endpoint_host, ServiceTls};
pub use tracing::tracing;

/// A section that does not convert into its mechanism's settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct BuildError {
    /// The refused field, below the section being converted (the root: the section).
    pub field: FieldPath,
    /// What is wrong with it.
    pub message: String,
}

impl BuildError {
    /// `message` about the section as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            field: FieldPath::root(),
            message: message.into(),
        }
    }

    /// `message` about `field` of the section.
    pub fn at(field: FieldPath, message: impl fmt::Display) -> Self {
        Self {
            field,
            message: message.to_string(),
        }
    }

    /// This error, for a section that sits at `prefix` (from the document root).
    pub fn within(self, prefix: &FieldPath) -> Self {
        Self {
            field: prefix.join(&self.field),
            message: self.message,
        }
    }

    /// This error, for a section that sits at `key` of the one being converted.
    pub fn under(self, key: &str) -> Self {
        Self {
            field: FieldPath::root().key(key).join(&self.field),
            message: self.message,
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_root() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl From<String> for BuildError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for BuildError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// Places a mechanism's refusal at a field of the section.
trait At<T> {
    /// The error, as a [`BuildError`] at `field` (a dotted path below the section).
    fn at(self, field: &str) -> Result<T, BuildError>;
    /// The error, as a [`BuildError`] about the section as a whole.
    fn here(self) -> Result<T, BuildError>;
}

/// The path of a dotted field name (`backoff.max`).
fn field(dotted: &str) -> FieldPath {
    dotted
        .split('.')
        .fold(FieldPath::root(), |path, key| path.key(key))
}

impl<T, E: fmt::Display> At<T> for Result<T, E> {
    fn at(self, dotted: &str) -> Result<T, BuildError> {
        self.map_err(|e| BuildError::at(field(dotted), e))
    }

    fn here(self) -> Result<T, BuildError> {
        self.map_err(|e| BuildError::new(e.to_string()))
    }
}
