//! The documents stay complete and connected. docs/configuration.md documents every configuration
//! key and every subcommand: the keys come from the example configs (themselves tested against
//! the defaults), so a key added in code but not in the reference fails here. The README keeps its
//! two commands. Every relative link in README.md and docs/*.md points at a file that exists, so
//! moving a page cannot leave a dead link behind.

use std::path::{Path, PathBuf};

const CONFIGURATION: &str = include_str!("../../docs/configuration.md");
const README: &str = include_str!("../../README.md");

/// Dotted keys of an example config, commented-out examples (`# key = ...`) included.
fn keys(example: &str) -> Vec<String> {
    let mut table = String::new();
    let mut keys = Vec::new();
    for line in example.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            table = format!("{header}[]");
        } else if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = header.to_owned();
        } else {
            let code = line.strip_prefix("# ").unwrap_or(line);
            if let Some((key, _)) = code.split_once(" = ")
                && !key.contains(' ')
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                keys.push(if table.is_empty() {
                    key.to_owned()
                } else {
                    format!("{table}.{key}")
                });
            }
        }
    }
    keys
}

#[test]
fn configuration_md_documents_every_config_key() {
    for (binary, example) in [
        ("collector", ringflow_collector::config::EXAMPLE_CONFIG),
        ("meter", ringflow_meter::config::EXAMPLE_CONFIG),
    ] {
        let keys = keys(example);
        assert!(keys.len() > 10, "{binary}: parsed only {keys:?}");
        for key in keys {
            assert!(
                CONFIGURATION.contains(&format!("`{key}`")),
                "docs/configuration.md does not document {binary} key `{key}`"
            );
        }
    }
}

#[test]
fn configuration_md_documents_every_subcommand() {
    for command in [
        "collector run",
        "collector dev-certs",
        "collector token",
        "collector read",
        "collector example-config",
        "meter run",
        "meter check",
        "meter example-config",
    ] {
        assert!(
            CONFIGURATION.contains(&format!("`{command}")),
            "docs/configuration.md does not document `{command}`"
        );
    }
}

/// The README's two commands: the demo, and the whole test suite (which `.ci/run` calls).
#[test]
fn readme_keeps_the_two_commands() {
    for command in ["cargo run -p ringflow-tests --bin demo", "./tests/run-all.sh"] {
        assert!(
            README.lines().any(|line| line.starts_with(command)),
            "README.md no longer gives the command `{command}` on a line of its own"
        );
    }
}

/// The workspace root (this crate is `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// README.md and every page under docs/.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![root.join("README.md")];
    let docs = std::fs::read_dir(root.join("docs")).expect("docs/ is readable");
    for entry in docs {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    pages
}

/// The targets of a page's Markdown links and images (`[text](target)`, `![alt](target)`,
/// `[label]: target`), outside code blocks and code spans, without a title.
fn link_targets(page: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_fence = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let prose = without_code_spans(line);
        if let Some(rest) = prose.trim_start().strip_prefix('[')
            && let Some((_, target)) = rest.split_once("]: ")
        {
            targets.push(target.to_owned());
        }
        let mut rest = prose.as_str();
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    targets
        .into_iter()
        .filter_map(|t| t.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// `line` with every `code span` taken out.
fn without_code_spans(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// A link target's file, or `None` when it leaves the repository or names only an anchor.
fn local_file(target: &str) -> Option<&str> {
    let external = ["http://", "https://", "mailto:"];
    if external.iter().any(|scheme| target.starts_with(scheme)) {
        return None;
    }
    let file = target.split('#').next().unwrap_or(target);
    (!file.is_empty()).then_some(file)
}

#[test]
fn link_targets_are_found_outside_code() {
    let page = "See [the docs](docs/a.md#x), ![a chart](b.png \"title\") and [site](https://x.org).\n\
                `[not](a-link.md)`\n\
                ```\n[nor](this.md)\n```\n\
                [ref]: c.md\n";
    assert_eq!(
        link_targets(page),
        ["docs/a.md#x", "b.png", "https://x.org", "c.md"]
    );
    let files: Vec<_> = ["docs/a.md#x", "#anchor", "https://x.org", "c.md"]
        .into_iter()
        .filter_map(local_file)
        .collect();
    assert_eq!(files, ["docs/a.md", "c.md"]);
}

#[test]
fn every_relative_link_in_the_docs_points_at_a_file() {
    let pages = pages();
    assert!(pages.len() > 5, "found only {pages:?}");
    let mut checked = 0;
    let mut dead = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("page is readable");
        let dir = page.parent().expect("a page has a directory");
        for target in link_targets(&text) {
            if let Some(file) = local_file(&target) {
                checked += 1;
                if !dir.join(file).exists() {
                    dead.push(format!("{}: {target}", page.display()));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "checked only {checked} links: is the parser still finding them?"
    );
    assert!(dead.is_empty(), "dead links:\n{}", dead.join("\n"));
}
