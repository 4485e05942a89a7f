//! `${VAR}` substitution in the configuration text, before YAML parsing.
//!
//! Forms: `${NAME}` (the variable must be set), `${NAME:-default}` (the default when the
//! variable is unset or empty, as in the shell), and `$${` for a literal `${`. `NAME` is
//! `[A-Za-z_][A-Za-z0-9_]*`; a reference must close on its own line.
//!
//! Substitution works on text, so a value may supply part of a scalar
//! (`listen: ${HOST:-127.0.0.1}:15001`). Comments are left alone, so the reference file can
//! show `${VAR}` in prose.
//!
//! NOTE: line:column positions of later errors are mapped back through [`OffsetMap`], so
//! they point into the text as written. A position *inside* a substituted value maps to
//! the `${` that produced it. The YAML parser itself sees the substituted text, so a value
//! containing a newline or YAML syntax changes the document's structure: that is the
//! caller's intent, not something this module second-guesses.

use std::fmt;

/// A variable lookup: the process environment in production, a map in tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Text after substitution, with the map back to the original offsets.
#[derive(Debug)]
pub(crate) struct Substituted {
    /// The text to hand to the YAML parser.
    pub(crate) text: String,
    /// Maps offsets in `text` back to offsets in the original.
    pub(crate) offsets: OffsetMap,
}

/// One replaced range: `original_len` bytes at `original_start` became `output_len` bytes
/// at `output_start`.
#[derive(Debug, Clone, Copy)]
struct Replacement {
    original_start: usize,
    original_len: usize,
    output_start: usize,
    output_len: usize,
}

/// Maps byte offsets in substituted text back to the text as written.
#[derive(Debug, Default)]
pub(crate) struct OffsetMap {
    /// In increasing order of both `original_start` and `output_start`.
    replacements: Vec<Replacement>,
}

impl OffsetMap {
    /// The original offset of `output` offset; inside a replacement, the replacement's start.
    pub(crate) fn to_original(&self, output: usize) -> usize {
        let mut original = output;
        for r in &self.replacements {
            if output < r.output_start {
                break;
            }
            if output < r.output_start + r.output_len {
                return r.original_start;
            }
            original = original + r.original_len - r.output_len;
        }
        original
    }

    /// Where the original offset `original` ended up: for the start of a replaced range,
    /// the start of its replacement; `None` for an offset inside a replaced range.
    pub(crate) fn to_output(&self, original: usize) -> Option<usize> {
        let mut output = original;
        for r in &self.replacements {
            if original < r.original_start {
                break;
            }
            if original == r.original_start {
                return Some(r.output_start);
            }
            if original < r.original_start + r.original_len {
                return None;
            }
            output = output + r.output_len - r.original_len;
        }
        Some(output)
    }
}

/// Why a `${...}` reference could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EnvErrorKind {
    /// `${NAME}` with `NAME` unset and no default.
    Missing(String),
    /// `${...}` whose content is not `NAME` or `NAME:-default`.
    Malformed(String),
    /// `${` with no `}` on the same line.
    Unterminated,
}

/// A failed reference, located at its `${` in the original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvError {
    /// Byte offset of the `${` in the original text.
    pub(crate) offset: usize,
    /// What went wrong.
    pub(crate) kind: EnvErrorKind,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            EnvErrorKind::Missing(name) => write!(
                f,
                "environment variable `{name}` is not set \
                 (write `${{{name}:-default}}` to give it a default)"
            ),
            EnvErrorKind::Malformed(body) => write!(
                f,
                "malformed substitution `${{{body}}}`: expected `${{NAME}}` or `${{NAME:-default}}`"
            ),
            EnvErrorKind::Unterminated => {
                write!(
                    f,
                    "unterminated substitution: `${{` without `}}` on the same line"
                )
            }
        }
    }
}

/// Replaces every `${...}` reference outside comments; reports every failed one.
///
/// A failed reference is replaced by `placeholder` so that the rest of the text can still
/// be parsed (to name the field a failure sits in).
pub(crate) fn substitute(text: &str, env: EnvLookup<'_>) -> Result<Substituted, Vec<EnvError>> {
    let (substituted, errors) = substitute_lossy(text, env, "");
    if errors.is_empty() {
        Ok(substituted)
    } else {
        Err(errors)
    }
}

/// Like [`substitute`], but failed references become `placeholder` and are returned
/// beside the text instead of failing it.
pub(crate) fn substitute_lossy(
    text: &str,
    env: EnvLookup<'_>,
    placeholder: &str,
) -> (Substituted, Vec<EnvError>) {
    let mut out = Substitution {
        text: String::with_capacity(text.len()),
        offsets: OffsetMap::default(),
        errors: Vec::new(),
    };
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        out.line(line_start, line, env, placeholder);
        line_start += line.len();
    }
    let Substitution {
        text,
        offsets,
        errors,
    } = out;
    (Substituted { text, offsets }, errors)
}

/// Output under construction.
struct Substitution {
    text: String,
    offsets: OffsetMap,
    errors: Vec<EnvError>,
}

/// Where the scanner is within one line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

impl Substitution {
    /// Substitutes within one line (`line` starts at byte `base` of the whole text).
    fn line(&mut self, base: usize, line: &str, env: EnvLookup<'_>, placeholder: &str) {
        let bytes = line.as_bytes();
        let mut copied = 0;
        let mut i = 0;
        let mut quote = Quote::None;
        while i < bytes.len() {
            let previous = if i == 0 { None } else { Some(bytes[i - 1]) };
            match (bytes[i], quote) {
                // NOTE: quotes are tracked per line, and a quote opens only where a YAML
                // scalar can start; this is enough to tell a `#` comment from a `#` in a
                // value on one line, which is all the scanner needs to know.
                (b'\'', Quote::None) | (b'"', Quote::None) if opens_scalar(previous) => {
                    quote = if bytes[i] == b'\'' {
                        Quote::Single
                    } else {
                        Quote::Double
                    };
                }
                (b'\'', Quote::Single) if bytes.get(i + 1) == Some(&b'\'') => i += 1,
                (b'\'', Quote::Single) | (b'"', Quote::Double) => quote = Quote::None,
                (b'\\', Quote::Double) => i += 1,
                (b'#', Quote::None) if previous.is_none_or(|b| b == b' ' || b == b'\t') => break,
                (b'$', _) if line[i..].starts_with("$${") => {
                    self.text.push_str(&line[copied..i]);
                    self.replace(base + i, 3, "${");
                    i += 3;
                    copied = i;
                    continue;
                }
                (b'$', _) if line[i..].starts_with("${") => {
                    self.text.push_str(&line[copied..i]);
                    let consumed = self.reference(base + i, &line[i..], env, placeholder);
                    i += consumed;
                    copied = i;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        self.text.push_str(&line[copied..]);
    }

    /// Substitutes the reference at the start of `rest` (which begins with `${`);
    /// returns the bytes it consumed.
    fn reference(
        &mut self,
        offset: usize,
        rest: &str,
        env: EnvLookup<'_>,
        placeholder: &str,
    ) -> usize {
        let body_end = rest
            .find(['}', '\n'])
            .filter(|&end| rest.as_bytes()[end] == b'}');
        let Some(body_end) = body_end else {
            self.errors.push(EnvError {
                offset,
                kind: EnvErrorKind::Unterminated,
            });
            let consumed = rest.trim_end_matches(['\n', '\r']).len();
            self.replace(offset, consumed, placeholder);
            return consumed;
        };
        let body = &rest[2..body_end];
        let consumed = body_end + 1;
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        let value = if !is_variable_name(name) {
            self.errors.push(EnvError {
                offset,
                kind: EnvErrorKind::Malformed(body.to_string()),
            });
            placeholder.to_string()
        } else {
            match (env(name), default) {
                (Some(value), Some(default)) if value.is_empty() => default.to_string(),
                (Some(value), _) => value,
                (None, Some(default)) => default.to_string(),
                (None, None) => {
                    self.errors.push(EnvError {
                        offset,
                        kind: EnvErrorKind::Missing(name.to_string()),
                    });
                    placeholder.to_string()
                }
            }
        };
        self.replace(offset, consumed, &value);
        consumed
    }

    /// Appends `with` in place of `original_len` bytes at `original_start`.
    fn replace(&mut self, original_start: usize, original_len: usize, with: &str) {
        self.offsets.replacements.push(Replacement {
            original_start,
            original_len,
            output_start: self.text.len(),
            output_len: with.len(),
        });
        self.text.push_str(with);
    }
}

/// Whether a quote after `previous` starts a quoted scalar (rather than sitting inside a
/// plain one, as in `don't`).
fn opens_scalar(previous: Option<u8>) -> bool {
    previous.is_none_or(|b| matches!(b, b' ' | b'\t' | b'[' | b'{' | b','))
}

/// `[A-Za-z_][A-Za-z0-9_]*`
fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("10.0.0.7".to_string()),
            "EMPTY" => Some(String::new()),
            "LONG" => Some("a-much-longer-value".to_string()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, Vec<EnvError>> {
        substitute(text, &env).map(|s| s.text)
    }

    #[test]
    fn set_variable_is_substituted_inside_a_scalar() {
        assert_eq!(
            run("listen: ${HOST}:80\n").as_deref(),
            Ok("listen: 10.0.0.7:80\n")
        );
    }

    #[test]
    fn default_applies_when_unset_or_empty() {
        assert_eq!(run("a: ${NOPE:-x y}").as_deref(), Ok("a: x y"));
        assert_eq!(run("a: ${EMPTY:-fallback}").as_deref(), Ok("a: fallback"));
        assert_eq!(run("a: ${HOST:-fallback}").as_deref(), Ok("a: 10.0.0.7"));
        assert_eq!(run("a: ${NOPE:-}").as_deref(), Ok("a: "));
    }

    #[test]
    fn set_but_empty_without_default_is_empty() {
        assert_eq!(run("a: '${EMPTY}'").as_deref(), Ok("a: ''"));
    }

    #[test]
    fn double_dollar_escapes() {
        assert_eq!(run("a: $${HOST}").as_deref(), Ok("a: ${HOST}"));
        assert_eq!(run("a: $$HOST $5").as_deref(), Ok("a: $$HOST $5"));
    }

    #[test]
    fn comments_are_not_substituted() {
        let text = "# use ${MISSING} here\na: 1 # or ${ALSO_MISSING}\n";
        assert_eq!(run(text).as_deref(), Ok(text));
    }

    #[test]
    fn hash_inside_quotes_or_words_is_not_a_comment() {
        assert_eq!(run("a: 'x # ${HOST}'").as_deref(), Ok("a: 'x # 10.0.0.7'"));
        assert_eq!(
            run("a: \"x # ${HOST}\"").as_deref(),
            Ok("a: \"x # 10.0.0.7\"")
        );
        assert_eq!(run("a: x#${HOST}").as_deref(), Ok("a: x#10.0.0.7"));
        assert_eq!(run("a: don't ${HOST}").as_deref(), Ok("a: don't 10.0.0.7"));
    }

    #[test]
    fn missing_variable_is_located_at_its_dollar() {
        let errors = run("a: 1\nb: x${NOPE}\n").expect_err("NOPE is unset");
        assert_eq!(
            errors,
            vec![EnvError {
                offset: 9,
                kind: EnvErrorKind::Missing("NOPE".to_string())
            }]
        );
        assert!(errors[0].to_string().contains("`NOPE` is not set"));
    }

    #[test]
    fn every_failure_is_reported() {
        let errors = run("a: ${A}\nb: ${1X}\nc: ${C\n").expect_err("three failures");
        let kinds: Vec<_> = errors.into_iter().map(|e| (e.offset, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (3, EnvErrorKind::Missing("A".to_string())),
                (11, EnvErrorKind::Malformed("1X".to_string())),
                (20, EnvErrorKind::Unterminated),
            ]
        );
    }

    #[test]
    fn offsets_map_back_across_substitutions() {
        let original = "a: ${LONG} b ${HOST} c\nd: $${x}\n";
        let s = substitute(original, &env).expect("all set");
        let map = |needle: &str| {
            let out = s.text.find(needle).expect("in output");
            s.offsets.to_original(out)
        };
        assert_eq!(map(" b "), original.find(" b ").expect("present"));
        assert_eq!(map(" c\n"), original.find(" c\n").expect("present"));
        assert_eq!(map("d:"), original.find("d:").expect("present"));
        assert_eq!(map("x}"), original.find("x}").expect("present"));
        // Inside a substituted value: the `${` that produced it.
        assert_eq!(map("longer"), 3);
    }

    #[test]
    fn lossy_substitution_uses_the_placeholder() {
        let (s, errors) = substitute_lossy("a: ${NOPE}\n", &env, "x");
        assert_eq!(s.text, "a: x\n");
        assert_eq!(errors.len(), 1);
    }
}
