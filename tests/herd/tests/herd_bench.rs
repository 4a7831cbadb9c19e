//! `herd bench --quick`, run as the real command line: every part (raw quinn, a collector with
//! the file sink and one with the JetStream sink, meter processes, idle sessions, the pieces)
//! runs on loopback and stops by itself, and bench.json holds every figure, ratio and target.
//! A part that loses data fails the run: the raw server checks its byte count, the ingest
//! sender waits for the ack of its last batch, and each meter must exit once the collector has
//! stored everything it sent. The figures themselves are not judged here (timing belongs in
//! the benchmarks: docs/benchmarks.md).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use ringflow_herd::bench::report::{RATIOS, SECTIONS, TARGETS};

#[tokio::test]
async fn a_quick_bench_runs_every_part_and_reports_every_figure() -> anyhow::Result<()> {
    let out = tempfile::Builder::new().prefix("herd-bench-test-").tempdir()?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herd"));
    cmd.args(["bench", "--quick", "--out"]).arg(out.path());
    let output = ringflow_tests::process::run_bounded(cmd, Duration::from_secs(240)).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "herd bench failed ({:?}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(out.path().join("bench.json"))?)?;
    assert_eq!(report["quick"], true);
    for key in SECTIONS {
        let section = report["results"][key]
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("bench.json has no results.{key}"))?;
        for (name, value) in section {
            let numbers: Vec<f64> = match value {
                Value::Array(runs) => runs.iter().filter_map(Value::as_f64).collect(),
                v => v.as_f64().into_iter().collect(),
            };
            assert!(
                !numbers.is_empty(),
                "results.{key}.{name} is not a number: {value}"
            );
            for n in numbers {
                assert!(n.is_finite() && n >= 0.0, "results.{key}.{name} = {n}");
            }
        }
    }
    for key in [
        "raw_quinn_bulk",
        "file_ingest",
        "file_e2e",
        "jetstream_direct",
        "jetstream_e2e",
        "file_sink",
    ] {
        let rate = report["results"][key]["records_per_sec"].as_f64().unwrap_or(0.0);
        assert!(rate > 0.0, "{key} moved nothing");
    }
    for key in RATIOS {
        let ratio = report["ratios"][key].as_f64().unwrap_or(f64::NAN);
        assert!(ratio.is_finite() && ratio > 0.0, "ratios.{key} = {ratio}");
    }
    let targets = report["targets"].as_array().map_or(0, Vec::len);
    assert_eq!(targets, TARGETS.len(), "every target checked");
    let table = std::fs::read_to_string(out.path().join("bench.md"))?;
    assert!(table.contains("| measurement | ringflow | ceiling, same run | ratio |"));
    assert!(stdout.contains(&table), "the table is printed as written");
    Ok(())
}
