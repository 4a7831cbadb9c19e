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
