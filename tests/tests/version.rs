//! `meter --version` and `collector --version` name the version and the commit they were built
//! from, found here independently of the build script: `$RINGFLOW_COMMIT` as the build saw it,
//! else `git` in this checkout (clean or `-dirty`), else `unknown`.

use std::process::Command;

enum ExpectedCommit {
    Given(&'static str),
    Git(String),
    Unknown,
}

fn expected_commit() -> ExpectedCommit {
    if let Some(given) = option_env!("RINGFLOW_COMMIT").filter(|c| !c.trim().is_empty()) {
        return ExpectedCommit::Given(given.trim());
    }
    let git = Command::new("git")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["rev-parse", "--short=12", "HEAD"])
        .output();
    match git {
        Ok(out) if out.status.success() => {
            ExpectedCommit::Git(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        _ => {
            eprintln!("not in a git checkout (or no git): the binary must say `commit unknown`");
            ExpectedCommit::Unknown
        }
    }
}

fn check(binary: &str, name: &str) {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let line = text.trim_end();
    let commit = line
        .strip_prefix(&format!("{name} {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line:?}"));
    match expected_commit() {
        ExpectedCommit::Given(given) => assert_eq!(commit, given),
        ExpectedCommit::Git(hash) => assert!(
            commit == format!("{hash}, built from a clean tree") || commit == format!("{hash}-dirty"),
            "{line:?} does not name HEAD {hash}"
        ),
        ExpectedCommit::Unknown => assert_eq!(commit, "unknown"),
    }
}

#[test]
fn the_meter_names_its_version_and_the_commit_built_from() {
    check(env!("CARGO_BIN_EXE_meter-fixture"), "meter");
}

#[test]
fn the_collector_names_its_version_and_the_commit_built_from() {
    check(env!("CARGO_BIN_EXE_collector-fixture"), "collector");
}
