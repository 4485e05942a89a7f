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

/// Byte offset of the start of `line` (1-based) in `text`.
fn line_start(text: &str, line: usize) -> Option<usize> {
    if line == 0 {
        return None;
    }
    if line == 1 {
        return Some(0);
    }
    text.match_indices('\n')
        .nth(line - 2)
        .map(|(newline, _)| newline + 1)
}

/// The byte offset of a 1-based `line` and character `column` in `text`.
///
/// A column past the end of its line clamps to the line's end, which is where parsers
/// report "unexpected end of line" problems.
pub(crate) fn offset_of(text: &str, line: usize, column: usize) -> Option<usize> {
    let start = line_start(text, line)?;
    let rest = &text[start..];
    let line_len = rest.find('\n').unwrap_or(rest.len());
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
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_begin = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_begin..].chars().count() + 1;
    Position { line, column }
}

/// A short rustc-style excerpt: the line holding `position` with a caret under its column.
pub(crate) fn snippet(text: &str, position: Position) -> String {
    let Some(start) = line_start(text, position.line) else {
        return String::new();
    };
    let rest = &text[start..];
    let line = &rest[..rest.find('\n').unwrap_or(rest.len())];
    let line = line.strip_suffix('\r').unwrap_or(line);
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
    fn snippet_points_at_the_column() {
        let shown = snippet(TEXT, Position { line: 2, column: 5 });
        assert_eq!(shown, "  |\n2 | bé: [x, y]\n  |     ^");
    }
}
