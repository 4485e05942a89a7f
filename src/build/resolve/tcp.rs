//! A `tcp` block (or its absence) -> the settings of a TCP passthrough listener.

use crate::config::{FieldPath, LimitsSection, TcpSection, UpstreamSection};
use crate::upstream::{TcpConfig, TcpConfigError};

use super::BuildError;

/// The settings of a `protocol: tcp` service or inbound listener: its `tcp` block (the
/// defaults without one), the shared connect timeout, and `limits.max_connections`
/// unless the block caps connections itself. A refusal names the block's field.
pub fn tcp(
    section: Option<&TcpSection>,
    upstream: &UpstreamSection,
    limits: &LimitsSection,
) -> Result<TcpConfig, BuildError> {
    let defaults = TcpSection::default();
    let section = section.unwrap_or(&defaults);
    let max_connections = section.max_connections.unwrap_or(limits.max_connections);
    TcpConfig::try_new(
        upstream.connect_timeout,
        section.idle_timeout,
        section.connect_attempts,
        max_connections,
    )
    .map_err(|error| {
        let field = match error {
            TcpConfigError::ZeroConnectTimeout => {
                // The shared field, checked by the document's own validation first.
                return BuildError::new(format!("upstream.connect_timeout: {error}"));
            }
            TcpConfigError::ZeroIdleTimeout => "idle_timeout",
            TcpConfigError::NoConnectAttempts => "connect_attempts",
            TcpConfigError::NoConnections => "max_connections",
        };
        BuildError::at(FieldPath::root().key(field), error)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn defaults_and_the_listener_cap_apply_without_a_block() {
        let limits = LimitsSection::default();
        let config = tcp(None, &UpstreamSection::default(), &limits).unwrap();
        assert_eq!(config.idle_timeout(), Duration::from_secs(3600));
        assert_eq!(config.connect_attempts(), 3);
        assert_eq!(config.max_connections(), limits.max_connections);
    }

    #[test]
    fn a_refused_value_names_its_field() {
        let section = TcpSection {
            connect_attempts: 0,
            ..TcpSection::default()
        };
        let error = tcp(
            Some(&section),
            &UpstreamSection::default(),
            &LimitsSection::default(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "connect_attempts: connect_attempts must be at least 1"
        );
    }
}
