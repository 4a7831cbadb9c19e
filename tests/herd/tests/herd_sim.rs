//! `herd sim` as the command line: the million-meter runs, checked through their reports
//! (the simulation is deterministic, so these are exact checks of the figures, not of timing),
//! what each defence buys (`--compare`), and that the same flags give the same run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use ringflow_herd::report::KEYS;

/// Runs `herd sim` with `args` into `out`; returns its exit code. Bounded in time.
async fn sim(out: &Path, args: &[&str]) -> anyhow::Result<i32> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herd"));
    cmd.arg("sim").args(args).arg("--out").arg(out);
    let output = ringflow_tests::process::run_bounded(cmd, Duration::from_secs(200)).await?;
    let code = output.status.code().unwrap_or(-1);
    anyhow::ensure!(
        code == 0 || code == 1,
        "herd sim {args:?} could not run (exit {code}): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
    Ok(code)
}

fn report(dir: &Path) -> anyhow::Result<Value> {
    let r: Value = serde_json::from_slice(&std::fs::read(dir.join("report.json"))?)?;
    for key in KEYS {
        anyhow::ensure!(r.get(key).is_some(), "report.json has no {key:?}");
    }
    anyhow::ensure!(r["mode"] == "sim", "mode {}", r["mode"]);
    for chart in ["sessions", "attempts", "ack_latency"] {
        let png = std::fs::read(dir.join(format!("{chart}.png")))?;
        anyhow::ensure!(png.starts_with(b"\x89PNG"), "{chart}.png is not a PNG");
    }
    Ok(r)
}

fn f(r: &Value, key: &str) -> f64 {
    r[key].as_f64().unwrap_or(f64::NAN)
}

/// The bar for a million meters on 200 collectors: balanced within 10%, never more
/// than 1.5 × the fleet's handshake capacity in attempts, everyone in within 1.25 × N /
/// capacity.
fn assert_million_bar(r: &Value) {
    let capacity = f(r, "handshake_capacity_per_s");
    assert_eq!(capacity, 200.0 * 5_000.0, "{r:#}");
    assert!(f(r, "sessions_max_over_mean") <= 1.10, "{r:#}");
    assert!(f(r, "peak_attempts_per_s") <= 1.5 * capacity, "{r:#}");
    assert!(f(r, "time_to_all_connected_s") <= 1.25 * 1e6 / capacity, "{r:#}");
    assert!(
        r["meters_connected_at_end"].as_u64().unwrap_or(0) >= 990_000,
        "{r:#}"
    );
    assert_eq!(r["verdict"], "pass", "{r:#}");
}

/// Runs `herd sim` with `args` at a million meters on 200 collectors and checks the bar;
/// returns the output directory and the report.
async fn a_million(args: &[&str]) -> anyhow::Result<(tempfile::TempDir, Value)> {
    let out = tempfile::tempdir()?;
    let all = [args, &["--meters", "1000000", "--collectors", "200"]].concat();
    let code = sim(out.path(), &all).await?;
    let r = report(out.path())?;
    assert_million_bar(&r);
    assert_eq!(code, 0);
    Ok((out, r))
}

#[tokio::test]
async fn a_million_meters_cold_start() -> anyhow::Result<()> {
    a_million(&["--scenario", "cold-start"]).await?;
    Ok(())
}

#[tokio::test]
async fn a_million_meters_lose_a_tenth_of_the_fleet_at_once() -> anyhow::Result<()> {
    let (out, _) = a_million(&["--scenario", "crash-one", "--crash", "20"]).await?;
    // The 20 killed collectors show no sessions at the end; their 100,000 meters are on the
    // other 180.
    let timeline: Value = serde_json::from_slice(&std::fs::read(out.path().join("timeline.json"))?)?;
    let last = &timeline["samples"]
        .as_array()
        .and_then(|s| s.last())
        .cloned()
        .unwrap_or_default();
    let sessions: Vec<u64> = last["sessions"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    assert_eq!(sessions.len(), 200);
    assert!(sessions[..20].iter().all(|&n| n == 0), "{:?}", &sessions[..20]);
    assert!(sessions[20..].iter().sum::<u64>() >= 990_000);
    Ok(())
}

#[tokio::test]
async fn a_million_meters_and_a_collector_joins() -> anyhow::Result<()> {
    let (_, r) = a_million(&["--scenario", "add-collector"]).await?;
    let moved = f(&r, "moved_fraction");
    let ideal = 1.0 / 201.0;
    assert!(
        (moved - ideal).abs() <= 0.2 * ideal,
        "moved {moved}, 1/(K+1) = {ideal}"
    );
    Ok(())
}

/// `--compare` on a fleet the herd loads to 90% of its handshake capacity (docs/herd.md has the
/// same at a million meters): each defence taken away makes a figure measurably worse.
#[tokio::test]
async fn each_defence_taken_away_makes_the_herd_worse() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let args = [
        "--scenario",
        "cold-start",
        "--meters",
        "200000",
        "--collectors",
        "100",
        "--capacity",
        "2000",
        "--compare",
    ];
    let code = sim(out.path(), &args).await?;
    assert_eq!(code, 0, "the baseline passes");
    let variants: Value = serde_json::from_slice(&std::fs::read(out.path().join("compare.json"))?)?;
    let by_name = |name: &str| -> Value {
        variants
            .as_array()
            .and_then(|v| v.iter().find(|x| x["variant"] == name).cloned())
            .unwrap_or_else(|| panic!("no variant {name} in {variants:#}"))
    };
    let base = by_name("baseline");
    let peak = |v: &Value| f(v, "peak_attempts_per_s");
    let time = |v: &Value| v["time_to_all_connected_s"].as_f64().unwrap_or(f64::INFINITY);
    let attempts = |v: &Value| v["attempts"].as_f64().unwrap_or(0.0);
    // Without jitter, meters that fail together retry together.
    let no_jitter = by_name("no-jitter");
    assert!(peak(&no_jitter) > 1.5 * peak(&base), "{variants:#}");
    assert!(attempts(&no_jitter) > 2.0 * attempts(&base), "{variants:#}");
    assert!(time(&no_jitter) > 2.0 * time(&base), "{variants:#}");
    // Without splay, the whole herd dials in the same instant.
    let no_splay = by_name("no-splay");
    assert!(peak(&no_splay) > 1.5 * peak(&base), "{variants:#}");
    // One DNS record for everyone: the one collector named cannot hand the fleet out fast
    // enough for everyone to be in by the end.
    let single = by_name("single-record-dns");
    assert!(time(&single) > 10.0 * time(&base), "{variants:#}");
    assert!(f(&single, "worst_max_over_mean") > 2.0, "{variants:#}");
    // Without the cap, the busiest collector ends further over the mean.
    let unbounded = by_name("no-bounded-load");
    assert!(
        f(&unbounded, "sessions_max_over_mean") > f(&base, "sessions_max_over_mean") + 0.01,
        "{variants:#}"
    );
    for name in [
        "baseline",
        "no-jitter",
        "no-splay",
        "single-record-dns",
        "no-bounded-load",
    ] {
        report(&out.path().join(name))?;
    }
    for chart in ["compare_attempts", "compare_balance"] {
        let png = std::fs::read(out.path().join(format!("{chart}.png")))?;
        assert!(png.starts_with(b"\x89PNG"), "{chart}.png");
        assert!(std::fs::read_to_string(out.path().join(format!("{chart}.svg")))?.contains("<svg"));
    }
    Ok(())
}

#[tokio::test]
async fn the_same_flags_give_the_same_run() -> anyhow::Result<()> {
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let args = [
        "--scenario",
        "rolling-restart",
        "--meters",
        "20000",
        "--collectors",
        "8",
        "--seed",
        "3",
    ];
    sim(a.path(), &args).await?;
    sim(b.path(), &args).await?;
    for file in ["report.json", "timeline.json"] {
        assert_eq!(
            std::fs::read(a.path().join(file))?,
            std::fs::read(b.path().join(file))?,
            "{file} differs between two runs"
        );
    }
    // Another seed is another run.
    let c = tempfile::tempdir()?;
    let other: Vec<&str> = args[..7].iter().copied().chain(["4"]).collect();
    sim(c.path(), &other).await?;
    assert_ne!(
        std::fs::read(a.path().join("timeline.json"))?,
        std::fs::read(c.path().join("timeline.json"))?
    );
    Ok(())
}

#[tokio::test]
async fn bad_flags_are_refused_with_what_to_change() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let output = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args([
            "sim",
            "--scenario",
            "cold-start",
            "--meters",
            "10",
            "--collectors",
            "2",
        ])
        .args(["--capacity", "0", "--out"])
        .arg(out.path())
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--capacity"), "{stderr}");
    Ok(())
}

/// Figures of a simulated herd from its timeline, from the herd's start on: the 99th percentile
/// of every collector's lag (ms) and the median of their accept rates.
fn herd_lag_and_rate(dir: &Path) -> anyhow::Result<(f64, f64)> {
    let t: Value = serde_json::from_slice(&std::fs::read(dir.join("timeline.json"))?)?;
    let herd = t["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["what"] == "herd starts"))
        .and_then(|e| e["t_s"].as_f64())
        .ok_or_else(|| anyhow::anyhow!("no herd in timeline.json"))?;
    let (mut lags, mut rates) = (Vec::new(), Vec::new());
    for s in t["samples"].as_array().into_iter().flatten() {
        if s["t_s"].as_f64().unwrap_or(0.0) >= herd {
            let each = |key: &str| -> Vec<f64> {
                s[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .collect()
            };
            lags.extend(each("control_lag_ms"));
            rates.extend(each("accept_rate"));
        }
    }
    anyhow::ensure!(!lags.is_empty() && !rates.is_empty(), "no samples after the herd");
    lags.sort_by(f64::total_cmp);
    rates.sort_by(f64::total_cmp);
    Ok((lags[lags.len() * 99 / 100], rates[rates.len() / 2]))
}

/// Collectors that can complete 300 handshakes a second with their accept rate set ten times
/// too high: at that fixed rate the handshake work queued ahead of their established sessions
/// (the lag they see) runs to seconds; with the adaptive accept rate it stays within tens of
/// milliseconds, and the rate it settles at is about what they can take.
#[tokio::test]
async fn an_adaptive_accept_rate_keeps_the_lag_down_under_a_ceiling_ten_times_too_high() -> anyhow::Result<()>
{
    let args = [
        "--scenario",
        "cold-start",
        "--meters",
        "20000",
        "--collectors",
        "4",
        "--capacity",
        "300",
        "--accept-rate",
        "3000",
        "--rtt-ms",
        "0.2",
    ];
    let (fixed, adaptive) = (tempfile::tempdir()?, tempfile::tempdir()?);
    sim(fixed.path(), &args).await?;
    let with: Vec<&str> = args.iter().copied().chain(["--adaptive-lag-ms", "5"]).collect();
    sim(adaptive.path(), &with).await?;
    let (fixed_lag, fixed_rate) = herd_lag_and_rate(fixed.path())?;
    let (lag, rate) = herd_lag_and_rate(adaptive.path())?;
    println!(
        "p99 lag: fixed {fixed_lag:.1} ms, adaptive {lag:.1} ms; median rate {fixed_rate:.0} / {rate:.0}"
    );
    assert_eq!(fixed_rate, 3_000.0);
    assert!(fixed_lag > 1_000.0, "fixed: {fixed_lag} ms");
    assert!(lag < 50.0, "adaptive: {lag} ms");
    assert!((150.0..=330.0).contains(&rate), "adaptive rate {rate}");
    for chart in ["collector_accept_rate", "collector_lag", "collector_handshakes"] {
        let png = std::fs::read(adaptive.path().join(format!("{chart}.png")))?;
        assert!(png.starts_with(b"\x89PNG"), "{chart}.png");
    }
    Ok(())
}
