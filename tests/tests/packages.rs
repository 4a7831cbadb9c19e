//! The Debian packages `ringflow-meter` and `ringflow-collector` (built by tests/run-all.sh with
//! `cargo run -p ringflow-packaging -- debs` before the tests run):
//! - each holds exactly the files docs/install.md lists, with its unit and maintainer scripts as
//!   they are in packaging/debian/ (a stale package fails and says how to rebuild it);
//! - lintian reports no error;
//! - the units pass `systemd-analyze verify` once installed, `systemd-analyze security` scores
//!   each no worse than docs/install.md records, and their system call filters let through
//!   every call a demo run makes (traced with strace);
//! - in a throwaway root (root only; elsewhere the test says why and fails), both install, their
//!   binaries run, an upgrade keeps the operator's config and the meter's id, spool and
//!   last-known-good fleet, removal keeps config and state, and purge deletes them.

use std::collections::BTreeSet;
use std::path::Path;

use ringflow_tests::packages::{self, ThrowawayRoot};

const PACKAGES: [(&str, &str); 2] = [("ringflow-meter", "meter"), ("ringflow-collector", "collector")];

fn install_md() -> String {
    std::fs::read_to_string(packages::workspace_root().join("docs/install.md")).expect("read docs/install.md")
}

/// The files docs/install.md lists for `package`: the backquoted absolute paths that start the
/// rows of the table under its `### package` heading.
fn documented_files(doc: &str, package: &str) -> BTreeSet<String> {
    let section = doc
        .split("\n### ")
        .find(|s| s.starts_with(package) && s[package.len()..].starts_with(['\n', ' ']))
        .unwrap_or_else(|| panic!("docs/install.md has no `### {package}` section"));
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `/"))
        .filter_map(|rest| rest.split('`').next())
        .map(|path| format!("/{path}"))
        .collect()
}

#[test]
fn packages_hold_what_the_install_page_lists_and_the_repo_has() {
    let doc = install_md();
    let dir = tempfile::tempdir().expect("tempdir");
    for (package, binary) in PACKAGES {
        let deb = packages::deb(package);
        let held: BTreeSet<String> = packages::files(&deb).into_iter().collect();
        let documented = documented_files(&doc, package);
        assert_eq!(
            held, documented,
            "{package}: the files in the package (left) are not those docs/install.md lists (right)"
        );
        assert_eq!(packages::field(&deb, "Package"), package);
        assert_eq!(packages::field(&deb, "Section"), "net");
        assert!(
            packages::field(&deb, "Depends").contains("adduser"),
            "{package} needs adduser for its user"
        );
        let tree = dir.path().join(package);
        packages::extract(&deb, &tree);
        let conffiles = std::fs::read_to_string(tree.join("DEBIAN/conffiles")).expect("conffiles");
        assert_eq!(
            conffiles.trim(),
            format!("/etc/ringflow/{binary}.toml"),
            "{package}'s conffiles"
        );
        let repo = packages::workspace_root().join("packaging/debian").join(binary);
        let unit = format!("{package}.service");
        assert_same(
            &tree.join("usr/lib/systemd/system").join(&unit),
            &repo.join(&unit),
        );
        for script in ["postinst", "postrm"] {
            let packaged = std::fs::read_to_string(tree.join("DEBIAN").join(script)).expect("script");
            let ours = std::fs::read_to_string(repo.join(script)).expect("our script");
            let ours_before_debhelper = ours.split("#DEBHELPER#").next().unwrap_or_default();
            assert!(
                packaged.starts_with(ours_before_debhelper),
                "{package}'s {script} is not packaging/debian/{binary}/{script}: the package is stale; \
                 rebuild it with `cargo run -p ringflow-packaging -- debs`"
            );
        }
        let config =
            std::fs::read_to_string(tree.join(format!("etc/ringflow/{binary}.toml"))).expect("config");
        let example = std::fs::read_to_string(packages::workspace_root().join(example_config(binary)))
            .expect("example");
        assert_eq!(
            config, example,
            "{package}'s config is not {binary}'s example config: the package is stale"
        );
    }
}

fn example_config(binary: &str) -> &'static str {
    if binary == "meter" {
        "agent/src/example-config.toml"
    } else {
        "collector/src/example-config.toml"
    }
}

fn assert_same(packaged: &Path, repo: &Path) {
    let a = std::fs::read_to_string(packaged).unwrap_or_else(|e| panic!("read {}: {e}", packaged.display()));
    let b = std::fs::read_to_string(repo).unwrap_or_else(|e| panic!("read {}: {e}", repo.display()));
    assert!(
        a == b,
        "{} differs from {}: the package is stale; rebuild it with `cargo run -p ringflow-packaging -- debs`",
        packaged.display(),
        repo.display()
    );
}

#[test]
fn lintian_reports_no_error() {
    let debs: Vec<_> = PACKAGES
        .iter()
        .map(|(package, _)| packages::deb(package))
        .collect();
    match ringflow_packaging_lintian(&debs) {
        Ok(report) => println!("{report}"),
        Err(errors) => panic!("{errors}"),
    }
}

/// `lintian` with the flags `package debs` uses: `Err` with the error lines.
fn ringflow_packaging_lintian(debs: &[std::path::PathBuf]) -> Result<String, String> {
    let out = std::process::Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .args(debs)
        .output()
        .unwrap_or_else(|e| panic!("run lintian ({e}): tests/ensure-packaging-tools.sh installs it"));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(errors.join("\n"))
    }
}

/// `systemd-analyze security --offline=yes` of a unit file: its overall exposure (0-10).
fn exposure(unit: &Path) -> f64 {
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .expect("run systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    line.split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in {line:?}"))
}

/// The exposure docs/install.md records for `unit`: its row `| `unit` | SCORE | ...`.
fn recorded_exposure(doc: &str, unit: &str) -> f64 {
    let prefix = format!("| `{unit}` | ");
    doc.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!("docs/install.md records no exposure for {unit} (a row `{prefix}SCORE | ...`)")
        })
}

#[test]
fn units_score_no_worse_than_recorded() {
    let doc = install_md();
    for (package, binary) in PACKAGES {
        let unit = format!("{package}.service");
        let path = packages::workspace_root()
            .join("packaging/debian")
            .join(binary)
            .join(&unit);
        let (now, recorded) = (exposure(&path), recorded_exposure(&doc, &unit));
        println!("{unit}: exposure {now} (recorded {recorded})");
        assert!(
            now <= recorded,
            "{unit}'s exposure went from {recorded} to {now}: a hardening setting was lost"
        );
    }
    let collector = recorded_exposure(&doc, "ringflow-collector.service");
    assert!(
        collector < 3.0,
        "the collector's unit must score under 3.0, records {collector}"
    );
}

#[test]
fn install_upgrade_remove_and_purge_in_a_throwaway_root() {
    let root = match ThrowawayRoot::new() {
        Ok(root) => root,
        Err(reason) => panic!("cannot run here: {reason}; run the test suite as root (CI does)"),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let debs: Vec<String> = PACKAGES
        .iter()
        .map(|(p, _)| root.copy_in(&packages::deb(p)))
        .collect();
    let nexts: Vec<String> = PACKAGES
        .iter()
        .map(|(p, _)| {
            let next = packages::with_version(&packages::deb(p), "99.0.0-1", &dir.path().join(p));
            root.copy_in(&next)
        })
        .collect();
    let args = |cmd: &'static str, files: &[String]| -> Vec<String> {
        std::iter::once(cmd.to_string())
            .chain(files.iter().cloned())
            .collect()
    };
    let dpkg = |a: Vec<String>| root.ok("dpkg", &a.iter().map(String::as_str).collect::<Vec<_>>());

    dpkg(args("-i", &debs));
    for (package, binary) in PACKAGES {
        let version = root.ok(binary, &["--version"]);
        assert!(
            version.starts_with(&format!("{binary} {}", env!("CARGO_PKG_VERSION"))),
            "{version}"
        );
        root.ok("getent", &["passwd", package]);
        let stat = root.ok(
            "stat",
            &["-c", "%a %U %G", &format!("/etc/ringflow/{binary}.toml")],
        );
        assert_eq!(
            stat.trim(),
            format!("640 root {package}"),
            "the config is read by root and {package} only"
        );
        root.ok(
            "systemd-analyze",
            &["verify", &format!("/usr/lib/systemd/system/{package}.service")],
        );
    }
    // An operator's config, and what a meter and a collector leave in their state directories.
    let state = [
        "/var/lib/ringflow/meter/meter-id",
        "/var/lib/ringflow/meter/fleet.json",
        "/var/lib/ringflow/meter/spool/00000000000000000001.seg",
        "/var/lib/ringflow/collector/segments/acme/00000000000000000001.seg",
    ];
    for file in state {
        let path = root.path(file);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, file).expect("write state");
    }
    let config = root.path("/etc/ringflow/meter.toml");
    let edited = std::fs::read_to_string(&config)
        .expect("config")
        .replace("org_id = \"example\"", "org_id = \"acme\"");
    std::fs::write(&config, &edited).expect("edit config");

    dpkg(args("-i", &nexts));
    assert_eq!(
        root.ok("dpkg-query", &["-W", "-f", "${Version}", "ringflow-meter"]),
        "99.0.0-1"
    );
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        edited,
        "the upgrade kept the operator's config"
    );
    for file in state {
        assert_eq!(
            std::fs::read_to_string(root.path(file)).ok().as_deref(),
            Some(file),
            "the upgrade kept {file}"
        );
    }

    dpkg(args("-r", &PACKAGES.map(|(p, _)| p.to_string())));
    assert!(!root.path("/usr/bin/meter").exists() && !root.path("/usr/bin/collector").exists());
    assert!(config.exists(), "removal keeps the config");
    for file in state {
        assert!(root.path(file).exists(), "removal keeps {file}");
    }

    dpkg(args("-P", &PACKAGES.map(|(p, _)| p.to_string())));
    assert!(!config.exists(), "purge deletes the config");
    for file in state {
        assert!(!root.path(file).exists(), "purge deletes {file}");
    }
}

/// The system calls in a `systemd-analyze syscall-filter` group, nested groups expanded.
fn syscall_group(name: &str) -> BTreeSet<String> {
    let out = std::process::Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", name])
        .output()
        .expect("run systemd-analyze syscall-filter");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut calls = BTreeSet::new();
    for item in text.lines().skip(1).map(str::trim) {
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        if item.starts_with('@') {
            calls.extend(syscall_group(item));
        } else {
            calls.insert(item.to_string());
        }
    }
    calls
}

/// What a unit's `SystemCallFilter=` lines let through: the allow lists' calls, less the `~`
/// lines' calls.
fn unit_allows(unit: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(unit).expect("read the unit");
    let expand = |items: &str| -> BTreeSet<String> {
        items
            .split_whitespace()
            .flat_map(|i| {
                if i.starts_with('@') {
                    syscall_group(i)
                } else {
                    BTreeSet::from([i.to_string()])
                }
            })
            .collect()
    };
    let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
    for value in text.lines().filter_map(|l| l.strip_prefix("SystemCallFilter=")) {
        match value.strip_prefix('~') {
            Some(deny) => denied.extend(expand(deny)),
            None => allowed.extend(expand(value)),
        }
    }
    assert!(
        !allowed.is_empty(),
        "{} has no SystemCallFilter allow list",
        unit.display()
    );
    allowed.difference(&denied).cloned().collect()
}

#[test]
fn the_units_filters_allow_every_system_call_a_demo_run_makes() {
    // The demo runs a collector and a meter (its sockets source on the bpf tier when root) in
    // one process for a few seconds: what it calls, both units must let through, but for `bpf`,
    // which only the meter calls.
    let dir = tempfile::tempdir().expect("tempdir");
    let counts = dir.path().join("strace.txt");
    let out = std::process::Command::new("timeout")
        .args(["120", "strace", "-f", "-qq", "-c", "-o"])
        .arg(&counts)
        .arg(env!("CARGO_BIN_EXE_demo"))
        .args(["--duration", "5", "--dir"])
        .arg(dir.path().join("demo"))
        .output()
        .unwrap_or_else(|e| panic!("run strace ({e}): tests/ensure-packaging-tools.sh installs it"));
    assert!(
        out.status.success(),
        "demo under strace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = std::fs::read_to_string(&counts).expect("strace's counts");
    let used: BTreeSet<String> = table
        .lines()
        .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
        .filter_map(|l| l.split_whitespace().last())
        .filter(|name| *name != "total")
        .map(str::to_string)
        .collect();
    assert!(
        used.contains("recvmmsg") || used.contains("recvmsg"),
        "strace saw no QUIC receive: {table}"
    );
    for (package, binary) in PACKAGES {
        let unit = packages::workspace_root().join(format!("packaging/debian/{binary}/{package}.service"));
        let allowed = unit_allows(&unit);
        let refused: Vec<&String> = used
            .iter()
            .filter(|call| !(allowed.contains(*call) || (binary == "collector" && *call == "bpf")))
            .collect();
        assert!(
            refused.is_empty(),
            "{package}.service's SystemCallFilter refuses {refused:?}, which a demo run calls (all: {used:?})"
        );
    }
}
