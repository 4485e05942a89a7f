//! Validation is building: every section of a decoded config goes through the same
//! conversion that starting it does, and a refusal is reported at its field.
//!
//! [`load`], [`parse`] and [`parse_with_env`] are the only ways a config enters
//! remora (`remora run`, `remora validate`, reload, the demo), so what one accepts the
//! others accept, and what a mechanism's constructor refuses is refused with file,
//! line, column and field, never at start-up without a location.

use std::path::Path;

use crate::config::{self, Config, ConfigError, EnvLookup, FieldPath, Issue};

use super::resolve;

/// Reads, substitutes, parses, validates and builds-checks the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    config::load(path, &check)
}

/// Like [`load`], for text already read; `origin` names it in errors.
pub fn parse(origin: &str, text: &str) -> Result<Config, ConfigError> {
    config::parse(origin, text, &check)
}

/// Like [`parse`], with `${VAR}` looked up through `env`.
pub fn parse_with_env(origin: &str, text: &str, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
    config::parse_with_env(origin, text, env, &check)
}

/// Every section's conversion into the settings of what it configures; the refusals,
/// each at its field.
pub fn check(config: &Config) -> Vec<Issue> {
    let mut issues = Vec::new();
    for (name, service) in &config.services {
        let path = FieldPath::root().key("services").key(name);
        if let Err(message) = resolve::balancer(&service.balancer) {
            issues.push(Issue::at(path.key("balancer"), message));
        }
        if let Some(check) = &service.health_check {
            if let Err(message) = resolve::health_check(check) {
                issues.push(Issue::at(path.key("health_check"), message));
            }
        }
        if let Some(outlier) = &service.outlier_detection {
            if let Err(message) = resolve::outlier(outlier) {
                issues.push(Issue::at(path.key("outlier_detection"), message));
            }
        }
    }
    issues
}
