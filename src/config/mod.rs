//! Configuration: the YAML schema, loading with located errors, validation, hot reload.

pub mod reload;
mod schema;

pub use schema::*;

use std::path::Path;

/// A configuration that could not be loaded; its message names file, line, column and field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Reads, substitutes, parses and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    parse(&path.display().to_string(), &text)
}

/// Parses and validates configuration text; `origin` names it in errors.
pub fn parse(origin: &str, text: &str) -> Result<Config, ConfigError> {
    serde_saphyr::from_str(text).map_err(|e| ConfigError(format!("{origin}: {e}")))
}

/// The effective config as YAML, for the admin listener.
pub fn to_yaml(config: &Config) -> String {
    serde_saphyr::to_string(config).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}
