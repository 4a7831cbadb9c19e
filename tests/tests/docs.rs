//! The README documents every configuration key and every subcommand. The keys come from the
//! example configs (themselves tested against the defaults), so a key added in code but not in the
//! README fails here.

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
fn readme_documents_every_config_key() {
    for (binary, example) in [
        ("collector", ringflow_collector::config::EXAMPLE_CONFIG),
        ("meter", ringflow_agent::config::EXAMPLE_CONFIG),
    ] {
        let keys = keys(example);
        assert!(keys.len() > 10, "{binary}: parsed only {keys:?}");
        for key in keys {
            assert!(
                README.contains(&format!("`{key}`")),
                "README does not document {binary} key `{key}`"
            );
        }
    }
}

#[test]
fn readme_documents_every_report_key() {
    for key in ringflow_tests::herd::report::KEYS {
        assert!(
            README.contains(&format!("`{key}`")),
            "README does not document report.json key `{key}`"
        );
    }
}

#[test]
fn readme_documents_every_subcommand() {
    for command in [
        "collector run",
        "collector dev-certs",
        "collector token",
        "collector read",
        "collector example-config",
        "meter run",
        "meter check",
        "meter example-config",
        "herd run",
        "herd sim",
        "herd bench",
    ] {
        assert!(
            README.contains(&format!("`{command}")),
            "README does not document `{command}`"
        );
    }
}

#[test]
fn benchmarks_md_documents_every_bench_key() {
    const BENCHMARKS: &str = include_str!("../../BENCHMARKS.md");
    use ringflow_tests::herd::bench::report::{RATIOS, SECTIONS, TARGETS};
    let keys = SECTIONS.iter().chain(RATIOS).chain(TARGETS.iter().map(|t| &t.0));
    for key in keys {
        assert!(
            BENCHMARKS.contains(&format!("`{key}`")),
            "BENCHMARKS.md does not document bench.json key `{key}`"
        );
    }
    for flag in [
        "--only",
        "--quick",
        "--records",
        "--repeat",
        "--idle-sessions",
        "--work-dir",
    ] {
        assert!(
            BENCHMARKS.contains(&format!("`{flag}")),
            "BENCHMARKS.md does not document `herd bench {flag}`"
        );
    }
}
