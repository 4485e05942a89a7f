//! The original configuration text: byte offsets to line:column and caret snippets.
//!
//! Every diagnostic is reported against the text the user wrote (before `${VAR}`
//! substitution), so this is the one place that turns an offset into a position.

use std::fmt;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Line number, starting at 1.
    pub line: usize,
    /// Column number in characters, starting at 1.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Where each line after the first begins: YAML breaks lines at `\n`, `\r\n` and a
/// bare `\r` (YAML 1.2, `b-break`), and the parser's line numbers count all three.
fn line_starts(text: &str) -> impl Iterator<Item = usize> + '_ {
    let bytes = text.as_bytes();
    bytes
        .iter()
        .enumerate()
        .filter_map(move |(at, byte)| match byte {
            b'\n' => Some(at + 1),
            b'\r' if bytes.get(at + 1) != Some(&b'\n') => Some(at + 1),
            _ => None,
        })
}

/// The length of the line `rest` begins with, without its break.
fn line_len(rest: &str) -> usize {
    rest.find(['\n', '\r']).unwrap_or(rest.len())
}

/// Byte offset of the start of `line` (1-based) in `text`.
fn line_start(text: &str, line: usize) -> Option<usize> {
    match line {
        0 => None,
        1 => Some(0),
        _ => line_starts(text).nth(line - 2),
    }
}

/// The byte offset of a 1-based `line` and character `column` in `text`.
///
/// A column past the end of its line clamps to the line's end, which is where parsers
/// report "unexpected end of line" problems.
pub(crate) fn offset_of(text: &str, line: usize, column: usize) -> Option<usize> {
    let start = line_start(text, line)?;
    let rest = &text[start..];
    let line_len = line_len(rest);
    let within = rest[..line_len]
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(line_len, |(byte, _)| byte);
    Some(start + within)
}

/// The position of byte `offset` in `text` (clamped to the text and to a char boundary).
pub(crate) fn position_of(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let (breaks, line_begin) = line_starts(text)
        .take_while(|start| *start <= offset)
        .fold((0, 0), |(count, _), start| (count + 1, start));
    let line = breaks + 1;
    let column = text[line_begin..offset].chars().count() + 1;
    Position { line, column }
}

/// A short rustc-style excerpt: the line holding `position` with a caret under its column.
pub(crate) fn snippet(text: &str, position: Position) -> String {
    let Some(start) = line_start(text, position.line) else {
        return String::new();
    };
    let rest = &text[start..];
    let line = &rest[..line_len(rest)];
    // Tabs and control characters would misalign the caret or garble a terminal.
    let shown: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let number = position.line.to_string();
    let gutter = " ".repeat(number.len());
    let pad = " ".repeat(position.column.saturating_sub(1));
    format!("{gutter} |\n{number} | {shown}\n{gutter} | {pad}^")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "a: 1\nbé: [x, y]\n\nlast";

    #[test]
    fn offsets_and_positions_agree() {
        for (line, column) in [(1, 1), (1, 4), (2, 1), (2, 5), (3, 1), (4, 4)] {
            let offset = offset_of(TEXT, line, column).expect("position exists");
            assert_eq!(position_of(TEXT, offset), Position { line, column });
        }
    }

    #[test]
    fn columns_count_characters() {
        // `é` is two bytes; the `[` is still the fifth character of line 2.
        assert_eq!(offset_of(TEXT, 2, 5), Some(10));
        assert_eq!(&TEXT[10..11], "[");
    }

    #[test]
    fn out_of_range_line_has_no_offset() {
        assert_eq!(offset_of(TEXT, 9, 1), None);
        assert_eq!(offset_of(TEXT, 0, 1), None);
    }

    #[test]
    fn a_carriage_return_alone_breaks_a_line_as_in_yaml() {
        let text = "a: 1\rb: 2\r\nc: é\n";
        for (line, column, byte) in [(1, 1, 0), (2, 1, 5), (2, 4, 8), (3, 4, 14)] {
            assert_eq!(offset_of(text, line, column), Some(byte), "{line}:{column}");
            assert_eq!(position_of(text, byte), Position { line, column });
        }
        assert_eq!(offset_of(text, 4, 1), Some(17));
        assert_eq!(offset_of(text, 5, 1), None);
        let shown = snippet(text, Position { line: 2, column: 4 });
        assert_eq!(shown, "  |\n2 | b: 2\n  |    ^");
    }

    /// Found by the `config` fuzz target: a syntax error after a bare `\r` (a line
    /// break to the YAML parser) had no position, as the line it named did not exist.
    #[test]
    fn a_syntax_error_after_a_bare_carriage_return_is_located() {
        let text = "'\r\0\0\0\0\0\0\0nt1\x0b";
        let error =
            crate::config::parse_with_env("c.yaml", text, &|_| None, &|_| Vec::new()).unwrap_err();
        let diagnostic = &error.diagnostics()[0];
        assert_eq!(diagnostic.kind, crate::config::DiagnosticKind::Syntax);
        assert_eq!(diagnostic.position, Some(Position { line: 2, column: 1 }));
    }

    #[test]
    fn snippet_points_at_the_column() {
        let shown = snippet(TEXT, Position { line: 2, column: 5 });
        assert_eq!(shown, "  |\n2 | bé: [x, y]\n  |     ^");
    }
}
