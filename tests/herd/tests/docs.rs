//! The herd's documents say what its outputs hold and how it is run: every `report.json` key,
//! herd subcommand and `herd run`/`herd sim` flag is documented in docs/herd.md, and every
//! `bench.json` key and `herd bench` flag in docs/benchmarks.md, so a key added in code but not
//! in the docs fails here.

const HERD: &str = include_str!("../../../docs/herd.md");
const BENCHMARKS: &str = include_str!("../../../docs/benchmarks.md");

#[test]
fn herd_md_documents_every_report_key() {
    for key in ringflow_herd::report::KEYS {
        assert!(
            HERD.contains(&format!("`{key}`")),
            "docs/herd.md does not document report.json key `{key}`"
        );
    }
}

#[test]
fn herd_md_documents_every_subcommand() {
    for command in ["herd run", "herd sim", "herd bench"] {
        assert!(
            HERD.contains(&format!("`{command}")),
            "docs/herd.md does not document `{command}`"
        );
    }
}

#[test]
fn herd_md_documents_every_run_and_sim_flag() {
    let run = [
        "--scenario",
        "--meters",
        "--collectors",
        "--duration",
        "--seed",
        "--out",
        "--first-wave",
        "--rebalance-window-ms",
        "--dns-ttl",
        "--sink",
        "--rate",
        "--batch-age-ms",
        "--accept-rate",
        "--work-dir",
        "--quiet",
    ];
    let sim = [
        "--start-spread-ms",
        "--capacity",
        "--rtt-ms",
        "--epsilon",
        "--poll-ms",
        "--crash",
        "--port",
        "--no-jitter",
        "--no-splay",
        "--single-record-dns",
        "--no-bounded-load",
        "--compare",
    ];
    for flag in run.into_iter().chain(sim) {
        assert!(
            HERD.contains(&format!("`{flag}")),
            "docs/herd.md does not document `{flag}`"
        );
    }
}

#[test]
fn benchmarks_md_documents_every_bench_key() {
    use ringflow_herd::bench::report::{RATIOS, SECTIONS, TARGETS};
    let keys = SECTIONS.iter().chain(RATIOS).chain(TARGETS.iter().map(|t| &t.0));
    for key in keys {
        assert!(
            BENCHMARKS.contains(&format!("`{key}`")),
            "docs/benchmarks.md does not document bench.json key `{key}`"
        );
    }
    for flag in [
        "--only",
        "--quick",
        "--records",
        "--repeat",
        "--idle-sessions",
        "--hold-sessions",
        "--max-unacked",
        "--work-dir",
    ] {
        assert!(
            BENCHMARKS.contains(&format!("`{flag}")),
            "docs/benchmarks.md does not document `herd bench {flag}`"
        );
    }
}
