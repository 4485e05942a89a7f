//! What the YAML parser's message leaves out, found by looking at the text itself: a
//! sequence or mapping opened and never closed, a key indented less than its siblings,
//! a file with nothing in it, bytes that are not UTF-8.

/// More said about a syntax error the parser reported at `offset` of `text`, if the
/// text shows its cause.
pub(crate) fn syntax_hint(text: &str, offset: usize) -> Option<String> {
    unclosed_flow(text, offset).or_else(|| short_indent(text, offset))
}

/// Where a required `key` that the parser found missing from the mapping at `offset`
/// is written instead, at another indentation (a key indented less than its siblings
/// lands in an enclosing mapping): its offset, and what to say.
pub(crate) fn misplaced_key(text: &str, offset: usize, key: &str) -> Option<(usize, String)> {
    let indent = |line: &str| line.len() - line.trim_start_matches(' ').len();
    let siblings = lines_with_offsets(text)
        .filter(|(start, _)| *start <= offset)
        .last()
        .map(|(_, line)| indent(line))?;
    let (start, line) = lines_with_offsets(text).find(|(_, line)| {
        let trimmed = line.trim_start_matches(' ');
        trimmed
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
            && indent(line) != siblings
    })?;
    let found = indent(line);
    let (line_number, _) = line_column(text, start);
    Some((
        start + found,
        format!(
            "`{key}` is written at line {line_number} indented {found} spaces, while the \
             other fields of this mapping are indented {siblings}: indent it as they are"
        ),
    ))
}

/// Whether `text` holds nothing but blank lines and comments.
pub(crate) fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#')
    })
}

/// The message for a file with nothing in it.
pub(crate) const BLANK: &str = "the file is empty (only blank lines and comments): nothing \
     to proxy; configure `inbound` (traffic to the local app) and/or `services` (traffic \
     from it)";

/// A `[` or `{` before `offset` that no bracket closes (outside quotes and comments).
fn unclosed_flow(text: &str, offset: usize) -> Option<String> {
    let end = offset.min(text.len());
    let mut open: Vec<(char, usize)> = Vec::new();
    for (line_start, line) in lines_with_offsets(&text[..end]) {
        let mut quote = None;
        for (i, c) in line.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') if i == 0 || line[..i].ends_with(char::is_whitespace) => break,
                (None, '[' | '{') => open.push((c, line_start + i)),
                (None, ']' | '}') => {
                    open.pop();
                }
                _ => {}
            }
        }
    }
    let (bracket, at) = open.first().copied()?;
    let (line, column) = line_column(text, at);
    let closer = if bracket == '[' { ']' } else { '}' };
    Some(format!(
        "the `{bracket}` opened at line {line}, column {column} is never closed (a `{closer}` is missing)"
    ))
}

/// The line at `offset` indented less than the line before it, and to no column an
/// enclosing key uses: a key meant as a sibling of the line above.
fn short_indent(text: &str, offset: usize) -> Option<String> {
    let lines: Vec<(usize, &str)> = lines_with_offsets(text)
        .filter(|(_, line)| {
            let trimmed = line.trim();
            !trimmed.is_empty() && !trimmed.starts_with('#')
        })
        .collect();
    let here = lines
        .iter()
        .rposition(|(start, _)| *start <= offset.min(text.len()))?;
    let indent = |line: &str| line.len() - line.trim_start_matches(' ').len();
    let (_, line) = lines[here];
    let (_, above) = lines[here.checked_sub(1)?];
    let (mine, theirs) = (indent(line), indent(above));
    if mine >= theirs {
        return None;
    }
    // The indentations of the keys that enclose the line above, innermost last.
    let mut enclosing = Vec::new();
    let mut limit = theirs;
    for (_, earlier) in lines[..here].iter().rev() {
        let level = indent(earlier);
        if level < limit {
            enclosing.push(level);
            limit = level;
        }
    }
    if enclosing.contains(&mine) {
        return None;
    }
    let key = line.trim().split(':').next().unwrap_or_default();
    Some(format!(
        "`{key}` is indented {mine} spaces: its siblings above are indented {theirs}"
    ))
}

/// Each line of `text` with the offset it starts at.
fn lines_with_offsets(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split_inclusive('\n').scan(0, |start, line| {
        let at = *start;
        *start += line.len();
        Some((at, line.trim_end_matches(['\n', '\r'])))
    })
}

/// 1-based line and column (in characters) of `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, column)
}

/// The 1-based line and column of the first byte of `bytes` that is not UTF-8, and the
/// text before it.
pub(crate) fn invalid_utf8(bytes: &[u8]) -> Option<(usize, usize, String)> {
    let error = std::str::from_utf8(bytes).err()?;
    let valid = &bytes[..error.valid_up_to()];
    // Valid by construction.
    let before = String::from_utf8_lossy(valid).into_owned();
    let (line, column) = line_column(&before, before.len());
    Some((line, column, before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unclosed_sequence_is_named_with_where_it_opened() {
        let text = "services:\n  orders:\n    endpoints: [10.0.0.1:80\n    timeout: 2s\n";
        let at = text.find("timeout").unwrap() + 7;
        let hint = syntax_hint(text, at).unwrap();
        assert!(hint.contains("`[` opened at line 3, column 16"), "{hint}");
    }

    #[test]
    fn brackets_in_quotes_and_comments_do_not_count() {
        let text = "a: \"[x\" # [y\nb: 'z{'\nc: d e\n";
        assert_eq!(unclosed_flow(text, text.len()), None);
    }

    #[test]
    fn a_key_short_of_its_siblings_is_named() {
        let text =
            "services:\n  orders:\n    listen: 127.0.0.1:9001\n   endpoints: [10.0.0.1:80]\n";
        let at = text.find("endpoints").unwrap();
        let hint = syntax_hint(text, at).unwrap();
        assert_eq!(
            hint,
            "`endpoints` is indented 3 spaces: its siblings above are indented 4"
        );
    }

    #[test]
    fn a_key_back_at_an_enclosing_level_is_no_mistake() {
        let text = "services:\n  orders:\n    listen: x\n  users:\n";
        assert_eq!(short_indent(text, text.find("users").unwrap()), None);
    }

    #[test]
    fn a_required_key_at_another_indentation_is_found() {
        let text = "inbound:\n  listen: 127.0.0.1:15006\n app: 127.0.0.1:8080\n";
        let at = text.find("listen").unwrap();
        let (offset, hint) = misplaced_key(text, at, "app").unwrap();
        assert_eq!(&text[offset..offset + 3], "app");
        assert!(hint.contains("line 3 indented 1 spaces"), "{hint}");
        assert!(hint.contains("indented 2"), "{hint}");
        assert_eq!(misplaced_key(text, at, "protocol"), None);
    }

    #[test]
    fn blank_files_and_bad_bytes() {
        assert!(is_blank(""));
        assert!(is_blank("# only\n\n  # comments\n"));
        assert!(!is_blank("service: a\n"));
        let (line, column, before) = invalid_utf8(b"a: 1\nservice: caf\xe9\n").unwrap();
        assert_eq!(
            (line, column, before.as_str()),
            (2, 13, "a: 1\nservice: caf")
        );
        assert!(invalid_utf8(b"fine").is_none());
    }
}
