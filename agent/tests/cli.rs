//! The `meter` binary's command line: exit codes and messages.

use std::process::Command;

fn meter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meter"))
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        "org_id = \"a\"\norg_token = \"t\"\ncollectors = [\"nohost\"]\nca_file = \"ca.pem\"\n",
    )
    .unwrap();
    for cmd in ["run", "check"] {
        let out = meter().args([cmd, "--config"]).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("collectors[0]") && err.contains("host:port"),
            "{err}"
        );
    }
}

#[test]
fn check_reports_a_missing_ca_and_run_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let example = meter().arg("example-config").output().unwrap();
    assert!(example.status.success());
    let path = dir.path().join("m.toml");
    let text = String::from_utf8(example.stdout)
        .unwrap()
        .replace("/var/lib/ringflow/meter", "state");
    std::fs::write(&path, text).unwrap();
    for cmd in ["check", "run"] {
        let out = meter().args([cmd, "--config"]).arg(&path).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(64),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("certs/ca.pem"), "{cmd}: {err}");
    }
}

/// The commit `meter --version` should name, found here independently of the build script:
/// `$RINGFLOW_COMMIT` as the build saw it, else `git` in this checkout, else `unknown`.
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

#[test]
fn version_names_the_version_and_the_commit_built_from() {
    let out = meter().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.trim_end();
    let commit = line
        .strip_prefix(concat!("meter ", env!("CARGO_PKG_VERSION"), " (commit "))
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
