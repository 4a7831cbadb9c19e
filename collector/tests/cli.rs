//! The `collector` binary's command line: exit codes and messages.

use std::process::Command;

fn collector() -> Command {
    Command::new(env!("CARGO_BIN_EXE_collector"))
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[[orgs]]\nid = \"a\"\ntoken_hashes = [\"sha256:00\"]\n",
    )
    .unwrap();
    let out = collector().args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("orgs[0].token_hashes[0]") && err.contains("collector token"),
        "{err}"
    );
}

#[test]
fn missing_tls_files_exit_64_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let example = collector().arg("example-config").output().unwrap();
    assert!(example.status.success());
    let path = dir.path().join("c.toml");
    let text = String::from_utf8(example.stdout)
        .unwrap()
        .replace("/var/lib/ringflow/collector", "data")
        .replace("[::]:4433", "127.0.0.1:0")
        .replace("127.0.0.1:9464", "127.0.0.1:0");
    std::fs::write(&path, text).unwrap();
    let out = collector().args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certs/server.pem"), "{err}");
}

#[test]
fn token_prints_a_token_and_its_config_line() {
    let out = collector().args(["token", "--org", "acme"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().next().unwrap().strip_prefix("token: ").unwrap();
    let expected = ringflow_collector::control::auth::hash_token(token).to_string();
    assert!(
        text.contains(&format!("token_hashes = [\"{expected}\"]")),
        "{text}"
    );
    let bad = collector()
        .args(["token", "--org", "Not Valid"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
}

#[test]
fn dev_certs_writes_the_three_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = collector()
        .args(["dev-certs", "--out"])
        .arg(dir.path())
        .args(["--name", "collectors.example"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["ca.pem", "server.pem", "server.key"] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
}
