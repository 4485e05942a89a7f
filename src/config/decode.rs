//! YAML text to [`Config`] with serde-saphyr, within an input budget, tracking the
//! field path of any failure with `serde_path_to_error`.

use serde_saphyr::{Budget, DefaultMessageFormatter, DuplicateKeyPolicy, MessageFormatter};

use super::error::{closest, DiagnosticKind, FieldPath, PathSegment};
use super::schema::Config;
use super::source::offset_of;

/// Deepest nesting of mappings and sequences accepted (the schema needs five).
const MAX_DEPTH: usize = 24;
/// Most YAML nodes accepted; a large config has a few thousand.
const MAX_NODES: usize = 100_000;
/// Most anchors, aliases and alias-replayed events: enough to share a block of settings,
/// far too few for a "billion laughs" expansion.
const MAX_ANCHORS: usize = 1_000;
const MAX_ALIASES: usize = 1_000;
const MAX_REPLAYED_EVENTS: usize = 100_000;

/// A failure to decode, located in the text that was decoded.
#[derive(Debug)]
pub(crate) struct DecodeError {
    /// Byte offset in the decoded text, when the parser knew it.
    pub(crate) offset: Option<usize>,
    /// The field being decoded when it failed.
    pub(crate) path: FieldPath,
    /// What kind of failure.
    pub(crate) kind: DiagnosticKind,
    /// One-line description.
    pub(crate) message: String,
}

/// Decodes one YAML document into a [`Config`].
pub(crate) fn decode(text: &str) -> Result<Config, DecodeError> {
    let mut failed_path = None;
    let decoded = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        serde_path_to_error::deserialize::<_, Config>(de).map_err(|e| {
            failed_path = Some(convert_path(e.path()));
            e.into_inner()
        })
    });
    decoded.map_err(|error| translate(text, &error, failed_path.unwrap_or_default()))
}

/// Parser options: the budget for small, hand-written files, and no duplicate keys.
fn options() -> serde_saphyr::Options {
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_nodes = MAX_NODES;
    budget.max_events = 4 * MAX_NODES;
    budget.max_anchors = MAX_ANCHORS;
    budget.max_aliases = MAX_ALIASES;
    // Two, so that a second document is reported as such rather than as a budget breach.
    budget.max_documents = 2;
    budget.max_total_scalar_bytes = super::MAX_CONFIG_BYTES;
    budget.max_recorded_anchor_events = MAX_REPLAYED_EVENTS;
    budget.max_recorded_anchor_bytes = super::MAX_CONFIG_BYTES;
    budget.max_reader_input_bytes = Some(super::MAX_CONFIG_BYTES);

    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_REPLAYED_EVENTS;
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    // Snippets are rendered from the text as written, not the substituted text.
    options.with_snippet = false;
    options
}

/// serde_path_to_error's path as ours (unknown segments are dropped).
fn convert_path(path: &serde_path_to_error::Path) -> FieldPath {
    use serde_path_to_error::Segment;
    let mut converted = FieldPath::root();
    for segment in path.iter() {
        converted = match segment {
            Segment::Seq { index } => converted.index(*index),
            Segment::Map { key } => converted.key(key.as_str()),
            Segment::Enum { variant } => converted.key(variant.as_str()),
            Segment::Unknown => converted,
        };
    }
    converted
}

/// Classifies a serde-saphyr error and phrases it for an operator.
fn translate(text: &str, error: &serde_saphyr::Error, path: FieldPath) -> DecodeError {
    use serde_saphyr::Error as E;

    let offset = error.location().and_then(|location| {
        let line = usize::try_from(location.line()).ok()?;
        let column = usize::try_from(location.column()).ok()?;
        offset_of(text, line, column)
    });
    let error = original(error);
    let (kind, path, message) = match error {
        E::SerdeUnknownField {
            field, expected, ..
        } => (
            DiagnosticKind::UnknownField,
            path,
            unknown("field", field, expected),
        ),
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => (
            DiagnosticKind::InvalidValue,
            path,
            unknown("value", variant, expected),
        ),
        E::SerdeMissingField { field, .. } => {
            let path = match path.segments().last() {
                Some(PathSegment::Key(last)) if last == field => path,
                _ => path.key(*field),
            };
            (
                DiagnosticKind::MissingField,
                path,
                format!("missing required field `{field}`"),
            )
        }
        E::InvalidScalar { ty, .. } => {
            let found = offset.map(|o| scalar_text(&text[o..])).unwrap_or_default();
            let message = if found.is_empty() {
                format!("expected {}", describe_type(ty))
            } else {
                format!("expected {}, found `{found}`", describe_type(ty))
            };
            (DiagnosticKind::InvalidValue, path, message)
        }
        E::Budget { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. } => (
            DiagnosticKind::InputLimit,
            path,
            format!(
                "{}; configuration files this large or this deeply nested are refused",
                message(error)
            ),
        ),
        E::ExternalMessage { .. }
        | E::Eof { .. }
        | E::MultipleDocuments { .. }
        | E::UnexpectedSequenceEnd { .. }
        | E::UnexpectedMappingEnd { .. }
        | E::ContainerEndMismatch { .. }
        | E::DuplicateMappingKey { .. }
        | E::UnknownAnchor { .. }
        | E::IndentationError { .. }
        | E::InvalidUtf8Input => (DiagnosticKind::Syntax, path, syntax_message(error)),
        _ => (DiagnosticKind::InvalidValue, path, message(error)),
    };
    DecodeError {
        offset,
        path,
        kind,
        message,
    }
}

/// The error under any snippet or alias wrapper.
fn original(error: &serde_saphyr::Error) -> &serde_saphyr::Error {
    match error.without_snippet() {
        serde_saphyr::Error::AliasError { error, .. } => original(error),
        other => other,
    }
}

/// serde-saphyr's own message, without its location suffix and control characters.
fn message(error: &serde_saphyr::Error) -> String {
    DefaultMessageFormatter
        .format_message(error)
        .chars()
        .flat_map(char::escape_debug)
        .collect::<String>()
        .replace("\\'", "'")
        .replace("\\\"", "\"")
}

/// Syntax errors, with the parser's API hints turned into advice for a file's author.
fn syntax_message(error: &serde_saphyr::Error) -> String {
    match error {
        serde_saphyr::Error::MultipleDocuments { .. } => {
            "more than one YAML document: a configuration is a single document (remove `---`)"
                .to_string()
        }
        serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } => {
            format!("duplicate key `{key}`")
        }
        serde_saphyr::Error::DuplicateMappingKey { key: None, .. } => "duplicate key".to_string(),
        other => format!("YAML syntax error: {}", message(other)),
    }
}

/// "unknown field `x`, did you mean `y`?" with the list of what is accepted.
fn unknown(what: &str, found: &str, expected: &[&str]) -> String {
    let accepted = expected
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match closest(found, expected) {
        Some(suggestion) => {
            format!("unknown {what} `{found}`, did you mean `{suggestion}`? (expected one of {accepted})")
        }
        None if expected.is_empty() => {
            format!("unknown {what} `{found}`: no {what}s are accepted here")
        }
        None => format!("unknown {what} `{found}`, expected one of {accepted}"),
    }
}

/// The plain scalar at the start of `rest` (up to the end of line, a comment or a flow
/// indicator), for quoting in a message.
fn scalar_text(rest: &str) -> String {
    let line = rest.lines().next().unwrap_or_default();
    let end = [" #", ",", "]", "}"]
        .iter()
        .filter_map(|stop| line.find(stop))
        .min()
        .unwrap_or(line.len());
    line[..end].trim().chars().take(80).collect()
}

/// A Rust scalar type name as an operator would say it.
fn describe_type(ty: &str) -> &'static str {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "bool" => "`true` or `false`",
        "char" => "a single character",
        _ => "a different kind of value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(text: &str) -> DecodeError {
        decode(text).expect_err("must not decode")
    }

    #[test]
    fn unknown_field_suggests_the_closest() {
        let e = fail("services:\n  orders:\n    endpionts: []\n");
        assert_eq!(e.kind, DiagnosticKind::UnknownField);
        assert_eq!(e.path.to_string(), "services.orders.endpionts");
        assert!(
            e.message.contains("did you mean `endpoints`?"),
            "{}",
            e.message
        );
        assert_eq!(e.offset, Some(24));
    }

    #[test]
    fn missing_field_path_names_the_field() {
        let e = fail("inbound:\n  listen: 0.0.0.0:1\n");
        assert_eq!(e.kind, DiagnosticKind::MissingField);
        assert_eq!(e.path.to_string(), "inbound.app");
    }

    #[test]
    fn wrong_type_says_what_was_expected() {
        let e = fail("limits:\n  max_connections: lots\n");
        assert_eq!(e.kind, DiagnosticKind::InvalidValue);
        assert_eq!(e.path.to_string(), "limits.max_connections");
        assert_eq!(e.message, "expected a non-negative integer, found `lots`");
    }

    #[test]
    fn unknown_variant_suggests() {
        let e = fail("log:\n  format: jsn\n");
        assert!(e.message.contains("did you mean `json`?"), "{}", e.message);
    }

    #[test]
    fn duplicate_keys_and_multiple_documents_are_syntax_errors() {
        assert_eq!(
            fail("service: a\nservice: b\n").kind,
            DiagnosticKind::Syntax
        );
        assert_eq!(
            fail("service: a\n---\nservice: b\n").kind,
            DiagnosticKind::Syntax
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        // The typed schema refuses nesting before it gets deep, so probe the budget itself.
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let error = serde_saphyr::from_str_with_options::<serde_json::Value>(&deep, options())
            .expect_err("too deep");
        let e = translate(&deep, &error, FieldPath::root());
        assert_eq!(e.kind, DiagnosticKind::InputLimit, "{}", e.message);
    }

    #[test]
    fn too_many_aliases_are_refused() {
        let aliases = vec!["*h"; MAX_ALIASES + 1].join(", ");
        let text = format!("services:\n  s:\n    hosts: [&h a, {aliases}]\n");
        let e = fail(&text);
        assert_eq!(e.kind, DiagnosticKind::InputLimit, "{}", e.message);
    }
}
