//! For the bpf tier's tests: whether this machine may load BPF programs, and which programs and
//! links a process holds.
//!
//! Owns: the rule that a test skips (with the reason printed) only where BPF cannot load: not
//! root. As root the tier must run; a meter built without its programs fails the test rather
//! than skipping it (tests/ensure-bpf-toolchain.sh installs clang for the README's test command).

use std::collections::BTreeSet;

/// `Err(reason)` when BPF programs cannot be loaded by this process: it is not root.
pub fn may_load() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    if euid == "0" {
        Ok(())
    } else {
        Err(format!(
            "not root (euid {euid}): BPF programs cannot be loaded; this test runs as root, as CI does"
        ))
    }
}

/// Prints why a bpf test does not run here and returns true, or returns false when it must run.
pub fn skip() -> bool {
    match may_load() {
        Ok(()) => {
            assert!(
                ringflow_meter::source::bpf::load::OBJECT.is_some(),
                "this machine can load BPF programs but the meter was built without them (no clang when it was built): run tests/ensure-bpf-toolchain.sh"
            );
            false
        }
        Err(reason) => {
            println!("SKIPPED: {reason}");
            true
        }
    }
}

/// The ids of the BPF programs and links process `pid` holds descriptors of (from
/// `/proc/PID/fdinfo`).
pub fn held_by(pid: u32) -> anyhow::Result<(BTreeSet<u32>, BTreeSet<u32>)> {
    let (mut programs, mut links) = (BTreeSet::new(), BTreeSet::new());
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        if let Some(link) = field("link_id:") {
            links.insert(link);
        } else if let Some(program) = field("prog_id:") {
            programs.insert(program);
        }
    }
    Ok((programs, links))
}

/// Which of `programs` and `links` still exist on this host.
pub fn still_loaded(programs: &BTreeSet<u32>, links: &BTreeSet<u32>) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let p = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .filter(|id| programs.contains(id))
        .collect();
    let l = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|l| l.id())
        .filter(|id| links.contains(id))
        .collect();
    (p, l)
}
