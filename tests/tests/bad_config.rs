//! Bad configuration files, for both binaries: each is refused at start with exit code 64 and a
//! message that names the key (or the file) at fault, before anything is bound or written.

use std::path::Path;
use std::time::Duration;

use ringflow_tests::TestBed;
use ringflow_tests::process::run_bounded;

const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-fixture");
const METER_BIN: &str = env!("CARGO_BIN_EXE_meter-fixture");

/// One bad config: what is wrong, how to make it from a good one, and what the message must
/// name.
struct Case {
    what: &'static str,
    edit: fn(&str, &Path) -> String,
    names: &'static str,
}

/// Replaces the line that sets `key` (which must be there) with `line`.
fn set_line(text: &str, key: &str, line: &str) -> String {
    let old = text
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("{key} is not set in the config"));
    swap(text, old, line)
}

/// Replaces `from` (which must be there) with `to`.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in the config");
    text.replacen(from, to, 1)
}

/// Runs `binary run --config FILE` on each case's config and checks the exit code and message.
async fn refuse_each(binary: &str, good: &str, dir: &Path, cases: &[Case]) -> anyhow::Result<()> {
    for (i, case) in cases.iter().enumerate() {
        let path = dir.join(format!("bad-{i}.toml"));
        std::fs::write(&path, (case.edit)(good, dir))?;
        let mut cmd = std::process::Command::new(binary);
        cmd.args(["run", "--config"]).arg(&path).env("NO_COLOR", "1");
        let out = run_bounded(cmd, Duration::from_secs(30)).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{}: {stderr}", case.what);
        assert!(
            stderr.contains(case.names),
            "{}: the message does not name {:?}:\n{stderr}",
            case.what,
            case.names
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_collector_configs_exit_64_naming_the_key() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let good = bed.collector_toml("c1", std::net::SocketAddr::from(([127, 0, 0, 1], 0)), "");
    let cases = [
        Case {
            what: "unknown key",
            edit: |t, _| format!("{t}\n[limits]\nmax_frame_byte = 5\n"),
            names: "unknown field `max_frame_byte`",
        },
        Case {
            what: "wrong type",
            edit: |t, _| format!("{t}\n[limits]\nmax_frame_bytes = \"big\"\n"),
            names: "key `limits.max_frame_bytes`",
        },
        Case {
            what: "missing required key",
            edit: |t, _| set_line(t, "cert", ""),
            names: "missing field `cert`",
        },
        Case {
            what: "missing certificate file",
            edit: |t, d| {
                set_line(
                    t,
                    "cert",
                    &format!("cert = \"{}\"", d.join("absent.pem").display()),
                )
            },
            names: "tls.cert",
        },
        Case {
            what: "missing client CA",
            edit: |t, d| {
                swap(
                    t,
                    "[tls]\n",
                    &format!("[tls]\nclient_ca = \"{}\"\n", d.join("absent-ca.pem").display()),
                )
            },
            names: "tls.client_ca",
        },
        Case {
            what: "a CA file that holds no certificate",
            edit: |t, d| {
                swap(
                    t,
                    "[tls]\n",
                    &format!("[tls]\nclient_ca = \"{}\"\n", d.join("bad-0.toml").display()),
                )
            },
            names: "tls.client_ca",
        },
        Case {
            what: "unreadable data_dir",
            edit: |t, d| {
                set_line(
                    t,
                    "data_dir",
                    &format!("data_dir = \"{}/x\"", d.join("bad-0.toml").display()),
                )
            },
            names: "data_dir",
        },
        Case {
            what: "a frame larger than a stream can ever receive",
            edit: |t, _| {
                format!("{t}\n[limits]\nmax_frame_bytes = 4194304\nstream_receive_window = 1048576\n")
            },
            names: "limits.stream_receive_window",
        },
        Case {
            what: "a retention cap below two segments",
            edit: |t, _| format!("{t}\n[sink.file]\nsegment_bytes = 1048576\nmax_bytes = 1048577\n"),
            names: "sink.file.max_bytes",
        },
        Case {
            what: "no failed login allowed at all",
            edit: |t, _| format!("{t}\n[auth]\nfailure_burst = 0\n"),
            names: "auth.failure_burst",
        },
        Case {
            what: "a token hash that is not one",
            edit: |t, _| set_line(t, "token_hashes", "token_hashes = [\"rft_a-token-not-its-hash\"]"),
            names: "orgs[0].token_hashes[0]",
        },
        Case {
            what: "client certificates required without a CA",
            edit: |t, _| swap(t, "[tls]\n", "[tls]\nrequire_client_cert = true\n"),
            names: "tls.require_client_cert",
        },
    ];
    refuse_each(COLLECTOR_BIN, &good, bed.path(), &cases).await?;
    // A config file that cannot be read at all is named too.
    let mut cmd = std::process::Command::new(COLLECTOR_BIN);
    cmd.args(["run", "--config"]).arg(bed.path());
    let out = run_bounded(cmd, Duration::from_secs(30)).await?;
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read config file"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_meter_configs_exit_64_naming_the_key() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let good = bed.meter_toml("m1", &[std::net::SocketAddr::from(([127, 0, 0, 1], 4433))], "");
    let cases = [
        Case {
            what: "unknown key",
            edit: |t, _| format!("colectors = []\n{t}"),
            names: "unknown field `colectors`",
        },
        Case {
            what: "wrong type",
            edit: |t, _| format!("{t}\n[batch]\nmax_records = \"many\"\n"),
            names: "key `batch.max_records`",
        },
        Case {
            what: "wrong type deep in a table",
            edit: |t, _| format!("{t}\n[sources.netflow]\nlisten = 2055\n"),
            names: "key `sources.netflow.listen`",
        },
        Case {
            what: "missing CA",
            edit: |t, d| {
                set_line(
                    t,
                    "ca_file",
                    &format!("ca_file = \"{}\"", d.join("absent-ca.pem").display()),
                )
            },
            names: "ca_file",
        },
        Case {
            what: "unreadable token file",
            edit: |t, d| {
                set_line(
                    t,
                    "org_token",
                    &format!("org_token_file = \"{}\"", d.join("absent-token").display()),
                )
            },
            names: "org_token_file",
        },
        Case {
            what: "a client certificate without its key",
            edit: |t, d| format!("client_cert = \"{}\"\n{t}", d.join("certs/ca.pem").display()),
            names: "client_key",
        },
        Case {
            what: "a spool smaller than its segments",
            edit: |t, _| format!("{t}\n[spool]\nmax_bytes = 10\n"),
            names: "spool.max_bytes",
        },
        Case {
            what: "a batch larger than any frame",
            edit: |t, _| format!("{t}\n[batch]\nmax_bytes = 1\n"),
            names: "batch.max_bytes",
        },
    ];
    refuse_each(METER_BIN, &good, bed.path(), &cases).await
}
