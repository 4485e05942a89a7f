//! Configuration errors: each names the file, line:column, field path and what is wrong.
//!
//! A [`ConfigError`] is plain owned data (`Send + Sync + 'static`), so a hot-reload task
//! can log it and keep serving the previous configuration.

use std::fmt;

use super::source::Position;

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathSegment {
    /// A mapping key: a field name or a map entry such as a service name.
    Key(String),
    /// A sequence index, from 0.
    Index(usize),
}

/// Where a value sits in the document, e.g. `services.orders.endpoints[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath(Vec<PathSegment>);

impl FieldPath {
    /// The document root.
    pub fn root() -> Self {
        Self::default()
    }

    /// This path extended by the key `key`.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut next = self.clone();
        next.0.push(PathSegment::Key(key.into()));
        next
    }

    /// This path extended by the sequence index `index`.
    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(PathSegment::Index(index));
        next
    }

    /// This path followed by `tail`.
    pub fn join(&self, tail: &FieldPath) -> Self {
        let mut joined = self.clone();
        joined.0.extend(tail.0.iter().cloned());
        joined
    }

    /// The last segment, when it is a key.
    pub fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(PathSegment::Key(key)) => Some(key),
            _ => None,
        }
    }

    /// The path without its last segment (the root stays the root).
    pub fn parent(&self) -> Self {
        let mut parent = self.clone();
        parent.0.pop();
        parent
    }

    /// The segments from the root down.
    pub fn segments(&self) -> &[PathSegment] {
        &self.0
    }

    /// Whether this is the document root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Index(index) => write!(f, "[{index}]")?,
                PathSegment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(key) {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Keys that read unambiguously in a dotted path; others are shown quoted.
fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// What kind of problem a [`Diagnostic`] reports, for callers that match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DiagnosticKind {
    /// The text is not well-formed YAML, or not a single document.
    Syntax,
    /// A key that the schema does not know (usually a typo).
    UnknownField,
    /// A required field is absent.
    MissingField,
    /// A value of the wrong type or form: a bad address, duration, number or variant.
    InvalidValue,
    /// A `${VAR}` reference that could not be substituted.
    Environment,
    /// The input exceeds a parsing budget (size, depth, aliases).
    InputLimit,
    /// Well-formed, but inconsistent or unsafe (duplicate listeners, no endpoints, ...).
    Semantic,
}

/// One located problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Diagnostic {
    /// The file (or other origin) the text came from.
    pub origin: String,
    /// Where in the text as written, when known.
    pub position: Option<Position>,
    /// The field the problem is about (the root when not known).
    pub path: FieldPath,
    /// The kind of problem.
    pub kind: DiagnosticKind,
    /// What is wrong, in one line.
    pub message: String,
    /// The offending line with a caret under the column (empty when no position).
    pub snippet: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(position) = self.position {
            write!(f, ":{position}")?;
        }
        if !self.path.is_root() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if !self.snippet.is_empty() {
            write!(f, "\n{}", self.snippet)?;
        }
        Ok(())
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{origin}: cannot read configuration: {source}")]
    Read {
        /// The path that was read.
        origin: String,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The text is larger than [`MAX_CONFIG_BYTES`](super::MAX_CONFIG_BYTES).
    #[error("{origin}: configuration is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// The file or origin name.
        origin: String,
        /// Its size in bytes: after substitution when substitution made it too large, and a
        /// lower bound for a file (reading stops just past the limit).
        size: u64,
        /// The limit in bytes.
        limit: usize,
    },
    /// The text has one or more located problems, in document order.
    #[error("{}", DiagnosticList(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The located problems (empty for read and size errors).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(diagnostics) => diagnostics,
            ConfigError::Read { .. } | ConfigError::TooLarge { .. } => &[],
        }
    }
}

/// Displays diagnostics one after another, separated by blank lines.
struct DiagnosticList<'a>(&'a [Diagnostic]);

impl fmt::Display for DiagnosticList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// The closest of `candidates` to the unknown `word`, if any is close enough to be a typo.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|&candidate| (strsim::jaro_winkler(word, candidate), candidate))
        .filter(|&(score, _)| score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_display_dotted_with_indices() {
        let path = FieldPath::root()
            .key("services")
            .key("orders")
            .key("endpoints")
            .index(1);
        assert_eq!(path.to_string(), "services.orders.endpoints[1]");
        assert_eq!(path.parent().to_string(), "services.orders.endpoints");
    }

    #[test]
    fn keys_with_dots_are_quoted() {
        let path = FieldPath::root()
            .key("services")
            .key("orders.v1")
            .key("hosts");
        assert_eq!(path.to_string(), "services.\"orders.v1\".hosts");
    }

    #[test]
    fn typos_get_a_suggestion_and_nonsense_does_not() {
        let fields = ["listen", "hosts", "path_prefixes", "protocol", "endpoints"];
        assert_eq!(closest("endpionts", &fields), Some("endpoints"));
        assert_eq!(closest("host", &fields), Some("hosts"));
        assert_eq!(closest("zzz", &fields), None);
    }

    #[test]
    fn diagnostic_display_is_origin_position_path_message_snippet() {
        let diagnostic = Diagnostic {
            origin: "remora.yaml".to_string(),
            position: Some(Position { line: 3, column: 7 }),
            path: FieldPath::root().key("limits").key("max_connections"),
            kind: DiagnosticKind::Semantic,
            message: "must be at least 1".to_string(),
            snippet: "snip".to_string(),
        };
        assert_eq!(
            diagnostic.to_string(),
            "remora.yaml:3:7: limits.max_connections: must be at least 1\nsnip"
        );
    }

    #[test]
    fn errors_can_cross_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<ConfigError>();
    }
}
