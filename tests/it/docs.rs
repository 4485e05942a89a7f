//! The examples of the policy pages (`docs/policies/*.md`) are configs remora accepts:
//! every fenced `yaml` block whose first line is `# a complete config` parses and
//! validates as a whole file; the other blocks are fragments and are not checked.

use std::path::{Path, PathBuf};

/// The comment that marks a block as a whole config file.
const MARKER: &str = "# a complete config";

/// A marked block: its page and its text, preceded by as many empty lines as the page
/// holds before it, so that an error's line number is the page's.
struct Example {
    origin: String,
    text: String,
}

/// The marked `yaml` blocks of one Markdown page, in order.
fn complete_examples(page: &Path, markdown: &str) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((_, line)) = lines.next() {
        if line.trim_end() != "```yaml" {
            continue;
        }
        let mut block = Vec::new();
        let mut first_line = None;
        for (number, line) in lines.by_ref() {
            if line.trim_end() == "```" {
                break;
            }
            first_line.get_or_insert(number + 1);
            block.push(line);
        }
        if block.first().is_some_and(|line| line.starts_with(MARKER)) {
            let before = "\n".repeat(first_line.unwrap_or(1) - 1);
            examples.push(Example {
                origin: page.display().to_string(),
                text: before + &block.join("\n") + "\n",
            });
        }
    }
    examples
}

fn policy_pages() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("docs/policies");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .map(|path| {
            path.strip_prefix(root)
                .map_or(path.clone(), Path::to_path_buf)
        })
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    pages
}

#[test]
fn every_complete_example_of_the_policy_pages_is_a_valid_config() {
    let pages = policy_pages();
    assert!(
        pages.len() >= 8,
        "the index and seven policy pages: {pages:?}"
    );
    let mut failures = Vec::new();
    for page in &pages {
        let markdown = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(page))
            .expect("readable page");
        let examples = complete_examples(page, &markdown);
        let is_index = page.file_name().is_some_and(|name| name == "README.md");
        if !is_index && examples.is_empty() {
            failures.push(format!("{}: no `{MARKER}` example", page.display()));
        }
        for example in examples {
            if let Err(error) = remora::build::parse(&example.origin, &example.text) {
                failures.push(error.to_string());
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_wrong_example_is_caught_and_a_fragment_is_skipped() {
    let page = Path::new("page.md");
    let markdown = "text\n\n```yaml\n# a complete config\nservices:\n  s:\n    endpoints: [10.0.0.1:80]\n    retry: missing\n```\n\n```yaml\nretry: fragment\n```\n";
    let examples = complete_examples(page, markdown);
    assert_eq!(examples.len(), 1, "the fragment is skipped");
    let error = remora::build::parse(&examples[0].origin, &examples[0].text)
        .expect_err("an unknown retry policy is refused");
    let rendered = error.to_string();
    assert!(
        rendered.contains("page.md:8:") && rendered.contains("unknown retry policy `missing`"),
        "the page's own line: {rendered}"
    );
}
