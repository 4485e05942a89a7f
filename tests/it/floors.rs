//! The floors of `docs/architecture.md`, kept: no `crate::` path in `src/` points from a
//! module to one on a higher floor, no mechanism names the config, and the mechanisms
//! import each other in one direction only. Unit tests (`#[cfg(test)]` modules and
//! `tests.rs` files) may reach anywhere.

use std::path::Path;

/// The floor of a top-level module, and for a mechanism its rank among the mechanisms
/// (a mechanism imports only mechanisms of a lower rank).
fn floor(module: &str) -> Option<(u8, u8)> {
    Some(match module {
        "core" => (1, 0),
        "config" => (2, 0),
        "access" | "discovery" | "tls" => (3, 0),
        "trace" | "balance" => (3, 1),
        "upstream" => (3, 2),
        "health" | "policy" => (3, 3),
        "routing" => (3, 4),
        "build" => (4, 0),
        "serve" | "demo" | "echo" | "fuzzing" => (5, 0),
        _ => return None,
    })
}

/// The code of `text` outside comments and outside its inline `#[cfg(test)] mod x { .. }`
/// (which closes a file by convention).
fn production_code(text: &str) -> String {
    let code: Vec<&str> = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect();
    let code = code.join("\n");
    let mut from = 0;
    while let Some(at) = code[from..].find("#[cfg(test)]") {
        let start = from + at;
        let after = code[start + "#[cfg(test)]".len()..].trim_start();
        let inline_module = after
            .strip_prefix("mod ")
            .and_then(|rest| rest.split_once(|c: char| !(c.is_alphanumeric() || c == '_')))
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('{'));
        if inline_module {
            return code[..start].to_string();
        }
        from = start + 1;
    }
    code
}

/// The top-level modules `code` names through `crate::`.
fn imported(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found.retain(|name| !name.is_empty());
    found
}

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn imports_only_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for path in files {
        let relative = path.strip_prefix(&src).unwrap();
        let name = relative.file_name().unwrap().to_string_lossy();
        if name == "tests.rs" || name == "test_support.rs" {
            continue;
        }
        let top = relative.components().next().unwrap().as_os_str();
        let top = top.to_string_lossy().trim_end_matches(".rs").to_string();
        let Some((from_floor, from_rank)) = floor(&top) else {
            continue; // lib.rs and main.rs: the roof
        };
        let code = production_code(&std::fs::read_to_string(&path).unwrap());
        for target in imported(&code) {
            if target == top {
                continue;
            }
            checked += 1;
            let Some((to_floor, to_rank)) = floor(&target) else {
                wrong.push(format!(
                    "{}: crate::{target} is on no floor",
                    relative.display()
                ));
                continue;
            };
            let upward = to_floor > from_floor;
            let config_in_mechanism = from_floor == 3 && target == "config";
            let sideways = from_floor == 3 && to_floor == 3 && to_rank >= from_rank;
            if upward || config_in_mechanism || sideways {
                wrong.push(format!("{}: crate::{target}", relative.display()));
            }
        }
    }
    assert!(
        checked > 100,
        "found only {checked} crate:: paths: the scan is broken"
    );
    assert!(
        wrong.is_empty(),
        "imports against the floors:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scan_sees_upward_imports() {
    let code = production_code(
        "use crate::serve::proxy::ProxyService;\nuse crate::{core::body, build::stack};\n\
         // crate::demo in a comment\n#[cfg(test)]\nmod tests {\n    use crate::demo;\n}\n",
    );
    assert_eq!(imported(&code), ["serve", "core", "build"]);
}
