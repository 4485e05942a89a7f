//! Floor 2, config: the YAML schema as plain data, loading with located errors.
//!
//! Loading runs one pipeline, each stage in its own file:
//!
//! 1. `env`: `${VAR}` / `${VAR:-default}` substitution in the text, with a map back
//!    to the text as written;
//! 2. `decode`: YAML to [`Config`] with serde-saphyr under an input budget, tracking
//!    the field path of a failure;
//! 3. `validate`: normalisation (host names) and the checks of the document itself
//!    (references, listeners, names, what `protocol: tcp` refuses in `tcp`) that serde
//!    cannot express;
//! 4. the caller's [`Check`]: the build floor passes the conversion of every section
//!    into the settings of what it configures, so a value the mechanism refuses is
//!    refused here, at its place in the file.
//!
//! Every issue is located through `locate`'s path -> position index.
//!
//! Every failure is a [`Diagnostic`] naming file, line:column (in the text as
//! written), field path and problem, followed by the offending line with a caret.
//!
//! [`load`] has no side effects and returns owned, `Send` errors, so a reload task can
//! call it on every change and keep the running configuration whenever it fails.

mod decode;
mod discovery;
mod env;
mod error;
mod hints;
mod locate;
mod names;
mod otel_env;
mod outcomes;
mod policies;
mod redact;
mod references;
mod route_action;
mod route_match;
mod routes;
mod scalar;
mod schema;
mod source;
mod tcp;
mod tls;
mod trace;
mod validate;
mod values;

pub use crate::core::protocol::UpstreamProtocol;
pub use discovery::{
    backend_of, BalancerAlgorithm, BalancerSection, ConsulSection, DiscoveryRef, DnsSection,
    EtcdSection, EurekaSection, FileSection, GrpcProbeSection, HealthCheckSection,
    HttpProbeSection, NacosSection, OutlierSection, RegisterSection, RegistrySection,
    TcpProbeSection, ZookeeperPayloadSection, ZookeeperSection,
};
pub use env::EnvLookup;
pub use error::{ConfigError, Diagnostic, DiagnosticKind, FieldPath, PathSegment};
pub use names::{Destination, ResolverSection, TtlBounds};
pub use outcomes::*;
pub use policies::*;
pub use redact::REDACTED;
pub use routes::*;
pub use scalar::parse_duration;
pub use schema::*;
pub use source::Position;
pub use tcp::TcpSection;
pub use tls::{AuthorizeRule, InboundTlsMode, MeshTlsSection, TlsSection, ALLOW_TRUST_DOMAIN};
pub use trace::*;
pub use validate::{Issue, MIN_HEADER_BYTES};
pub use values::*;

use std::io::Read;
use std::path::Path;

use locate::NodeIndex;

/// Largest configuration accepted, in bytes, before and after substitution.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Checks of a decoded document beyond its own: every problem, each at its field.
pub type Check<'a> = &'a dyn Fn(&Config) -> Vec<Issue>;

/// Reads, substitutes (from the process environment), parses and validates `path`,
/// then runs `check`.
pub fn load(path: &Path, check: Check<'_>) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let read_error = |source| ConfigError::Read {
        origin: origin.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    // Reads one byte past the limit, to tell "at the limit" from "over it".
    let limit = u64::try_from(MAX_CONFIG_BYTES).unwrap_or(u64::MAX);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if let Some((_, _, before)) = hints::invalid_utf8(&bytes) {
        let bad = bytes[before.len()];
        return Err(ConfigError::Invalid(vec![diagnostic(
            &origin,
            &before,
            Some(before.len()),
            FieldPath::root(),
            DiagnosticKind::Syntax,
            format!(
                "byte 0x{bad:02x} is not UTF-8: a configuration is UTF-8 text (was the file \
                 saved in another encoding?)"
            ),
        )]));
    }
    // UTF-8, as just checked.
    let text = String::from_utf8_lossy(&bytes);
    parse(&origin, &text, check)
}

/// Parses and validates configuration text, substituting from the process environment,
/// then runs `check`; `origin` names the text in errors (normally the file name).
pub fn parse(origin: &str, text: &str, check: Check<'_>) -> Result<Config, ConfigError> {
    parse_with_env(origin, text, &|name| std::env::var(name).ok(), check)
}

/// Like [`parse`], with `${VAR}` values looked up through `env` instead of the process
/// environment (for tests, or a caller that layers its own variables).
///
/// Positions in errors refer to `text` as written. A position on a line after a
/// substitution is exact; a column after a substitution on the same line is mapped back
/// too, and a position inside a substituted value points at its `${`.
pub fn parse_with_env(
    origin: &str,
    text: &str,
    env: EnvLookup<'_>,
    check: Check<'_>,
) -> Result<Config, ConfigError> {
    check_size(origin, text)?;
    let substituted = env::substitute(text, env).map_err(|errors| {
        ConfigError::Invalid(environment_diagnostics(origin, text, env, &errors))
    })?;
    check_size(origin, &substituted.text)?;
    let located = |offset: Option<usize>| offset.map(|o| substituted.offsets.to_original(o));
    if hints::is_blank(&substituted.text) {
        return Err(ConfigError::Invalid(vec![diagnostic(
            origin,
            text,
            None,
            FieldPath::root(),
            DiagnosticKind::Semantic,
            hints::BLANK.to_string(),
        )]));
    }

    let mut config = decode::decode(&substituted.text).map_err(|e| {
        let mut offset = e.offset;
        let hint = match (e.kind, e.offset, e.path.last_key()) {
            (DiagnosticKind::Syntax, Some(at), _) => hints::syntax_hint(&substituted.text, at),
            (DiagnosticKind::MissingField, Some(at), Some(key)) => {
                hints::misplaced_key(&substituted.text, at, key).map(|(found, hint)| {
                    // The real mistake is where the key is written.
                    offset = Some(found);
                    hint
                })
            }
            _ => None,
        };
        let message = match hint {
            Some(hint) => format!("{}; {hint}", e.message),
            None => e.message,
        };
        ConfigError::Invalid(vec![diagnostic(
            origin,
            text,
            located(offset),
            e.path,
            e.kind,
            message,
        )])
    })?;

    let otel_errors = otel_env::apply(&mut config.tracing, env);
    if !otel_errors.is_empty() {
        return Err(ConfigError::Invalid(
            otel_errors
                .into_iter()
                .map(|message| {
                    diagnostic(
                        origin,
                        text,
                        None,
                        FieldPath::root().key("tracing"),
                        DiagnosticKind::Semantic,
                        format!("in the environment: {message}"),
                    )
                })
                .collect(),
        ));
    }
    validate::normalize(&mut config);
    let mut issues = validate::validate(&config);
    if issues.is_empty() {
        issues = check(&config);
    }
    if issues.is_empty() {
        return Ok(config);
    }
    let index = NodeIndex::build(&substituted.text);
    let mut diagnostics: Vec<Diagnostic> = issues
        .into_iter()
        .map(|issue| {
            let offset = if issue.at_key {
                index.key_offset(&issue.path)
            } else {
                index.offset(&issue.path)
            };
            diagnostic(
                origin,
                text,
                located(offset),
                issue.path,
                DiagnosticKind::Semantic,
                issue.message,
            )
        })
        .collect();
    diagnostics.sort_by_key(|d| d.position);
    Err(ConfigError::Invalid(diagnostics))
}

/// Renders the effective configuration as YAML (for the admin `/config` endpoint);
/// the result parses back to an equal [`Config`].
pub fn to_yaml(config: &Config) -> String {
    // NOTE: every schema type serializes to plain maps, sequences and strings, so this
    // cannot fail in practice; if it ever does, the admin page says so instead of
    // taking the process down.
    serde_saphyr::to_string(config)
        .unwrap_or_else(|e| format!("# the configuration could not be rendered: {e}\n"))
}

fn check_size(origin: &str, text: &str) -> Result<(), ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            origin: origin.to_string(),
            size: u64::try_from(text.len()).unwrap_or(u64::MAX),
            limit: MAX_CONFIG_BYTES,
        });
    }
    Ok(())
}

/// One diagnostic per failed `${...}`, each with the field it sits in when the rest of
/// the document (with a placeholder in its place) lets us tell.
fn environment_diagnostics(
    origin: &str,
    text: &str,
    env: EnvLookup<'_>,
    errors: &[env::EnvError],
) -> Vec<Diagnostic> {
    let (placeholder, _) = env::substitute_lossy(text, env, "placeholder");
    let index = NodeIndex::build(&placeholder.text);
    errors
        .iter()
        .map(|error| {
            let path = substituted_offset(&placeholder.offsets, error.offset)
                .and_then(|offset| index.path_at(offset))
                .unwrap_or_default();
            diagnostic(
                origin,
                text,
                Some(error.offset),
                path,
                DiagnosticKind::Environment,
                error.to_string(),
            )
        })
        .collect()
}

/// The offset in substituted text where the reference at `original` ended up.
fn substituted_offset(offsets: &env::OffsetMap, original: usize) -> Option<usize> {
    offsets.to_output(original)
}

fn diagnostic(
    origin: &str,
    text: &str,
    offset: Option<usize>,
    path: FieldPath,
    kind: DiagnosticKind,
    message: String,
) -> Diagnostic {
    let position = offset.map(|offset| source::position_of(text, offset));
    Diagnostic {
        origin: origin.to_string(),
        position,
        path,
        kind,
        message,
        snippet: position
            .map(|p| source::snippet(text, p))
            .unwrap_or_default(),
    }
}
