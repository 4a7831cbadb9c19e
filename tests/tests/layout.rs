//! The layout rules of ARCHITECTURE.md that a reader relies on, held by reading the tree:
//! the wire crate holds the wire only, no file of the two binaries is too long to read, and no
//! function outside the tests is too long to read as a script of named steps.
//!
//! (The collector's plane rule, `data/` never importing `control/`, has its own test in the
//! collector crate: `collector/tests/planes.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;

/// The longest a source file of `agent/src` or `collector/src` may be, tests included.
const MAX_FILE_LINES: usize = 600;
/// The longest a function may be outside the tests.
const MAX_FN_LINES: usize = 120;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_wire_crate_depends_on_no_config_or_logging_setup() {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "ringflow-proto",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(workspace())
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        tree.contains("prost"),
        "cargo tree printed no dependency of ringflow-proto:\n{tree}"
    );
    for banned in ["tracing-subscriber ", "toml ", "serde_path_to_error "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(banned)),
            "ringflow-proto depends on {}: operational conventions belong in ringflow-ops\n{tree}",
            banned.trim()
        );
    }
}

#[test]
fn no_source_file_of_the_binaries_is_over_the_limit() {
    let root = workspace();
    let mut long = Vec::new();
    for dir in ["agent/src", "collector/src"] {
        for file in rust_files(&root.join(dir)) {
            let lines = std::fs::read_to_string(&file)
                .expect("read source")
                .lines()
                .count();
            if lines > MAX_FILE_LINES {
                long.push(format!(
                    "{} ({lines} lines)",
                    file.strip_prefix(&root).unwrap_or(&file).display()
                ));
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_FILE_LINES} lines (split by responsibility; move a big test module into a tests.rs beside it): {long:?}"
    );
}

/// A line without its string literals, char literals and `//` comment, so braces in them do not
/// count.
fn code_of(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push_str("\"\"");
            }
            '\'' => {
                // A char literal ('{', '\n') or a lifetime ('a): skip only the former.
                let rest: String = chars.clone().take(3).collect();
                let literal = rest.starts_with('\\') || rest.chars().nth(1) == Some('\'');
                if literal {
                    for c in chars.by_ref() {
                        if c == '\'' {
                            break;
                        }
                    }
                }
                out.push('\'');
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

/// Whether a (code) line starts a function item.
fn starts_fn(code: &str) -> Option<String> {
    let words: Vec<&str> = code.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "fn")?;
    let allowed = [
        "pub",
        "pub(crate)",
        "pub(super)",
        "async",
        "const",
        "unsafe",
        "extern",
    ];
    if !words[..at]
        .iter()
        .all(|w| allowed.contains(w) || w.starts_with("pub("))
    {
        return None;
    }
    let name = words.get(at + 1)?;
    Some(name.split(['(', '<']).next().unwrap_or(name).to_owned())
}

/// Functions longer than `max` lines in `text`, up to the first `#[cfg(test)]` (test modules sit
/// at the end of a file by this workspace's convention).
fn long_functions(text: &str, max: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = starts_fn(&code_of(line)) else {
            continue;
        };
        let (mut depth, mut opened) = (0i64, false);
        for (j, line) in lines.iter().enumerate().skip(i) {
            let code = code_of(line);
            if !opened && code.contains(';') && !code.contains('{') {
                break; // a declaration without a body
            }
            depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            opened |= code.contains('{');
            if opened && depth <= 0 {
                let len = j - i + 1;
                if len > max {
                    out.push((name.clone(), i + 1, len));
                }
                break;
            }
        }
    }
    out
}

#[test]
fn the_length_check_sees_a_long_function_and_skips_tests() {
    let mut text = String::from("pub async fn long(x: u32) -> u32 {\n");
    text.push_str(&"    let _ = \"}\";\n".repeat(130));
    text.push_str("}\nfn short() {}\n#[cfg(test)]\nmod tests {\n    fn long_test() {\n");
    text.push_str(&"    let _ = 1;\n".repeat(130));
    text.push_str("    }\n}\n");
    assert_eq!(
        long_functions(&text, MAX_FN_LINES),
        vec![("long".to_owned(), 1, 132)]
    );
}

#[test]
fn no_function_outside_the_tests_is_over_the_limit() {
    let root = workspace();
    let mut long = Vec::new();
    for dir in [
        "agent/src",
        "collector/src",
        "proto",
        "tests/src",
        "tests/herd/src",
    ] {
        for file in rust_files(&root.join(dir)) {
            if file.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).expect("read source");
            for (name, line, len) in long_functions(&text, MAX_FN_LINES) {
                let path = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
                long.push(format!("{path}:{line} {name} ({len} lines)"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split each into named steps): {long:#?}"
    );
}
