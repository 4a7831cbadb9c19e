//! The planes rule (ARCHITECTURE.md, "Rules the tests enforce"): no module under `collector/src/data/` imports from
//! the control plane. The data plane may be starved, stalled or slow; the control plane must
//! never wait on it, and the first step towards waiting on something is naming it.
//!
//! The test reads every `.rs` file under `src/data/` and looks, outside comments and string
//! literals, for a path into `control`: `crate::control`, `crate::{.., control, ..}`, a glob of
//! the crate root (`crate::*`), or a `super::` chain that climbs out of `data` and then names
//! `control` (or globs the crate root). It fails naming each file and line.

use std::path::{Path, PathBuf};

/// A path into the control plane found in a data-plane file.
#[derive(Debug, PartialEq, Eq)]
struct Violation {
    line: usize,
    what: &'static str,
}

#[test]
fn no_data_plane_module_imports_the_control_plane() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = root.join("src").join("data");
    let mut files = Vec::new();
    rust_files(&data, &mut files);
    assert!(
        files.len() > 5,
        "found only {} files under {}",
        files.len(),
        data.display()
    );
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let depth = module_depth(&data, file);
        let lines: Vec<&str> = text.lines().collect();
        for v in violations(&text, depth) {
            let shown = file.strip_prefix(root.parent().unwrap_or(root)).unwrap_or(file);
            let source = lines.get(v.line - 1).map_or("", |l| l.trim());
            found.push(format!("{}:{}: {} ({})", shown.display(), v.line, source, v.what));
        }
    }
    assert!(
        found.is_empty(),
        "the data plane must never import the control plane (ARCHITECTURE.md: `data/` never imports \
         `control/`); move what both need out of `control/`, or pass it in as a plain value:\n  {}",
        found.join("\n  ")
    );
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
}

/// How deep below `crate::data` the file's module is: `data/mod.rs` 0, `data/ingest.rs` and
/// `data/sink/mod.rs` 1, `data/sink/nats/link.rs` 3.
fn module_depth(data: &Path, file: &Path) -> usize {
    let relative = file.strip_prefix(data).unwrap_or(file);
    let parts = relative.components().count();
    let is_mod = file.file_name().is_some_and(|n| n == "mod.rs");
    if is_mod { parts - 1 } else { parts }
}

/// Paths into `control` in `source`, the text of a module `depth` levels below `crate::data`.
fn violations(source: &str, depth: usize) -> Vec<Violation> {
    let code = strip_comments_and_strings(source);
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let Some((word, end)) = ident_at(bytes, i) else {
            i += 1;
            continue;
        };
        let after_path = preceded_by_path_separator(bytes, i);
        let mut next = end;
        let target = match word {
            "crate" if !after_path => Some(next),
            "super" if !after_path => {
                // Count the chain of `super`s; it reaches the crate root after `depth + 1`.
                let mut supers = 1;
                while let Some(seg) = segment_after(bytes, next)
                    && let Some(("super", seg_end)) = ident_at(bytes, seg)
                {
                    supers += 1;
                    next = seg_end;
                }
                (supers == depth + 1).then_some(next)
            }
            _ => None,
        };
        if let Some(at) = target
            && let Some(what) = names_control(bytes, at)
        {
            let line = 1 + bytes[..i].iter().filter(|&&b| b == b'\n').count();
            found.push(Violation { line, what });
        }
        i = next.max(i + 1);
    }
    found
}

/// Whether the path continuing after the crate root at `at` (`::control`, `::{.., control}`,
/// `::*`) reaches into `control`.
fn names_control(bytes: &[u8], at: usize) -> Option<&'static str> {
    let seg = segment_after(bytes, at)?;
    match bytes[seg] {
        b'*' => Some("a glob of the crate root brings `control` into scope"),
        b'{' => {
            let close = matching_brace(bytes, seg)?;
            let group = std::str::from_utf8(&bytes[seg + 1..close]).ok()?;
            top_level_items(group)
                .into_iter()
                .any(|item| {
                    let first = item.split("::").next().unwrap_or("").trim();
                    first == "control" || first == "*" || first.starts_with("control ")
                })
                .then_some("imports `control` from the crate root")
        }
        _ => match ident_at(bytes, seg) {
            Some(("control", _)) => Some("a path into `control`"),
            _ => None,
        },
    }
}

/// The position of the segment after `::` at `at` (whitespace allowed), if there is one.
fn segment_after(bytes: &[u8], at: usize) -> Option<usize> {
    let mut j = skip_space(bytes, at);
    if bytes.get(j) != Some(&b':') || bytes.get(j + 1) != Some(&b':') {
        return None;
    }
    j = skip_space(bytes, j + 2);
    (j < bytes.len()).then_some(j)
}

fn skip_space(bytes: &[u8], mut j: usize) -> usize {
    while j < bytes.len() && bytes[j].is_ascii_whitespace() {
        j += 1;
    }
    j
}

/// Whether the identifier at `i` follows `::` (then it is not the start of a path).
fn preceded_by_path_separator(bytes: &[u8], i: usize) -> bool {
    let mut j = i;
    while j > 0 && bytes[j - 1].is_ascii_whitespace() {
        j -= 1;
    }
    j >= 2 && &bytes[j - 2..j] == b"::"
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The identifier starting exactly at `i` (not in the middle of one), and where it ends.
fn ident_at(bytes: &[u8], i: usize) -> Option<(&str, usize)> {
    if i >= bytes.len() || !(bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
        return None;
    }
    if i > 0 && is_ident_byte(bytes[i - 1]) {
        return None;
    }
    let mut end = i;
    while end < bytes.len() && is_ident_byte(bytes[end]) {
        end += 1;
    }
    std::str::from_utf8(&bytes[i..end]).ok().map(|w| (w, end))
}

fn matching_brace(bytes: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (j, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

/// The comma-separated items of a `use` group, nested groups kept whole.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (j, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(group[start..j].trim());
                start = j + 1;
            }
            _ => {}
        }
    }
    items.push(group[start..].trim());
    items
}

/// `source` with comments, string and character literals blanked out (newlines kept, so line
/// numbers still hold). Doc comments may name `crate::control`; code may not.
fn strip_comments_and_strings(source: &str) -> String {
    let b = source.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for byte in &mut out[from..to.min(b.len())] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            let end = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            // Block comments nest in Rust.
            let (mut depth, mut j) = (0usize, i);
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if b[i] == b'r'
            && (i == 0 || !is_ident_byte(b[i - 1]))
            && matches!(b.get(i + 1), Some(b'"' | b'#'))
        {
            // A raw string: r"..." or r#"..."#.
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                i += 1;
                continue;
            }
            let mut closing = vec![b'"'];
            closing.extend(std::iter::repeat_n(b'#', hashes));
            let body = i + 2 + hashes;
            let end = b[body..]
                .windows(closing.len())
                .position(|w| w == closing.as_slice())
                .map_or(b.len(), |p| body + p + closing.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if b[i] == b'\'' {
            // A character literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            if b.get(i + 1) == Some(&b'\\') {
                let end = b[i + 2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map_or(b.len(), |p| i + 3 + p);
                blank(&mut out, i, end);
                i = end;
            } else if b.get(i + 2) == Some(&b'\'') {
                blank(&mut out, i, i + 3);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_check_finds_every_way_into_control_and_nothing_else() {
    let lines = |src: &str, depth| -> Vec<usize> { violations(src, depth).iter().map(|v| v.line).collect() };
    // Direct paths, groups, globs, in code at any place.
    assert_eq!(lines("use crate::control::session;", 1), [1]);
    assert_eq!(lines("use crate :: control;", 1), [1]);
    assert_eq!(
        lines("use crate::{data::sink, control::admin::LoadReport};", 1),
        [1]
    );
    assert_eq!(
        lines("use crate::{\n    config::Config,\n    control,\n};", 1),
        [1]
    );
    assert_eq!(lines("use crate::*;", 1), [1]);
    assert_eq!(
        lines(
            "fn f() {\n    let s = crate::control::session::RETRY_AFTER_UNAVAILABLE_MS;\n}",
            2
        ),
        [2]
    );
    // `super` chains: out of `data` from `data/ingest.rs` (depth 1) takes two.
    assert_eq!(lines("use super::super::control::load;", 1), [1]);
    assert_eq!(lines("use super::super::{control, telemetry};", 1), [1]);
    assert_eq!(lines("use super::control::load;", 0), [1]);
    assert_eq!(lines("use super::*;", 0), [1]);
    // Inside `data`, or not `control`: fine.
    assert!(lines("use super::super::telemetry::CollectorMetrics;", 1).is_empty());
    assert!(lines("use super::control_stream;", 1).is_empty());
    assert!(
        lines("use super::super::control;", 2).is_empty(),
        "that is crate::data::control"
    );
    assert!(lines("use crate::data::sink::control;", 1).is_empty());
    assert!(lines("use crate::controls::x;", 1).is_empty());
    assert!(lines("use crate::{data, telemetry::{self, control_stuff}};", 1).is_empty());
    // Comments and strings may name it.
    assert!(
        lines(
            "//! Must never: import [`crate::control`].\n/* crate::control /* nested */ */",
            1
        )
        .is_empty()
    );
    assert!(
        lines(
            "let s = \"crate::control\"; let r = r#\"crate::control\"#; let c = '\"';",
            1
        )
        .is_empty()
    );
    assert_eq!(lines("fn f<'a>(x: &'a str) {}\nuse crate::control;", 1), [2]);
}

#[test]
fn module_depth_counts_from_data() {
    let data = Path::new("/x/src/data");
    assert_eq!(module_depth(data, &data.join("mod.rs")), 0);
    assert_eq!(module_depth(data, &data.join("ingest.rs")), 1);
    assert_eq!(module_depth(data, &data.join("sink/mod.rs")), 1);
    assert_eq!(module_depth(data, &data.join("sink/nats/link.rs")), 3);
}
