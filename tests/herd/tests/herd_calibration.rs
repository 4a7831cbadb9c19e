//! Calibration: the same small scenario run live (`herd run`: real collectors and meters on
//! loopback) and simulated (`herd sim`, given what the live run measured: the handshakes the
//! collectors sustained while the herd connected, their accept rate, the herd's own start-up spread, the
//! port, so the same meters land on the same collectors) agree on `time_to_all_connected_s`
//! within 25% and on `sessions_max_over_mean` within 0.05. Runs alone (see
//! `.config/nextest.toml`): the live half measures this machine.
//!
//! The simulation's service rate is what the collectors sustained while the herd connected
//! (the report's `handshakes_sustained_per_s`: the median of the fleet's completed handshakes per
//! second over the samples from the herd's start while a tenth of the meters or more still
//! waited), not the capacity the probe measured before the herd: on
//! one machine the herd's own meters (thousands of pipelines starting, their TLS client work)
//! share the CPU with the collectors, so during a herd the collectors complete fewer handshakes
//! than with the probe's one light client. On a slower 2-core machine the probe's figure made
//! the simulation finish in 3.1-3.6 s where the live run took 4.6-6.3 s, three runs of three;
//! the peak second's rate (a token bucket's burst included) did not do either.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

const METERS: usize = 2_000;
const COLLECTORS: usize = 4;
/// `herd run`'s default accept rate on one machine: 1,000/s shared by the collectors.
const ACCEPT_RATE: u32 = 1_000 / COLLECTORS as u32;

/// Runs `herd` with `args` (its own process group, killed if it outlives `limit`).
async fn herd(args: &[String], limit: Duration) -> anyhow::Result<i32> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herd"));
    cmd.args(args);
    let output = ringflow_tests::process::run_bounded(cmd, limit).await?;
    let code = output.status.code().unwrap_or(-1);
    anyhow::ensure!(
        code == 0 || code == 1,
        "herd {args:?} could not run (exit {code}): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
    Ok(code)
}

fn json(path: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

/// What the simulation needs from a live run's timeline: its port, and how long starting the
/// herd's meters took (between the "herd: N meters" and "herd started" events).
fn live_setting(timeline: &Value) -> anyhow::Result<(u16, u64)> {
    let port = timeline["addresses"][0]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no collector address in timeline.json"))?;
    let at = |prefix: &str| {
        timeline["events"]
            .as_array()
            .and_then(|e| {
                e.iter()
                    .find(|e| e["what"].as_str().is_some_and(|w| w.starts_with(prefix)))
            })
            .and_then(|e| e["t_s"].as_f64())
    };
    let (Some(herd), Some(started)) = (
        at(ringflow_herd::live::HERD_EVENT_PREFIX),
        at(ringflow_herd::live::HERD_STARTED),
    ) else {
        anyhow::bail!("no herd events in timeline.json");
    };
    Ok((port, ((started - herd) * 1_000.0).round().max(0.0) as u64))
}

/// Runs `scenario` live for `secs`, then simulated with what the live run measured; returns
/// both reports.
async fn live_and_sim(scenario: &str, secs: u64) -> anyhow::Result<(Value, Value)> {
    let dir = tempfile::tempdir()?;
    let (live, sim) = (dir.path().join("live"), dir.path().join("sim"));
    let common = |mode: &str, out: &Path| -> Vec<String> {
        [
            mode,
            "--scenario",
            scenario,
            "--meters",
            &METERS.to_string(),
            "--collectors",
            &COLLECTORS.to_string(),
            "--duration",
            &secs.to_string(),
            "--seed",
            "5",
            "--accept-rate",
            &ACCEPT_RATE.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--out".to_owned(), out.display().to_string()])
        .collect()
    };
    let mut args = common("run", &live);
    args.push("--quiet".into());
    herd(&args, Duration::from_secs(secs + 90)).await?;
    let live_report = json(&live.join("report.json"))?;
    let (port, spread_ms) = live_setting(&json(&live.join("timeline.json"))?)?;
    let capacity = live_report["handshakes_sustained_per_s"].as_f64().unwrap_or(0.0) / COLLECTORS as f64;
    anyhow::ensure!(
        capacity > 0.0,
        "the live run completed no handshakes while the herd connected: {live_report:#}"
    );
    println!(
        "simulated with {capacity:.0} handshakes/s per collector (live, sustained), spread {spread_ms} ms"
    );
    let mut args = common("sim", &sim);
    args.extend([
        "--port".to_owned(),
        port.to_string(),
        "--capacity".into(),
        format!("{capacity:.0}"),
        "--rtt-ms".into(),
        "0.2".into(),
        "--poll-ms".into(),
        ringflow_herd::fleet::LOAD_POLL_MS.to_string(),
        "--start-spread-ms".into(),
        spread_ms.to_string(),
    ]);
    herd(&args, Duration::from_secs(60)).await?;
    Ok((live_report, json(&sim.join("report.json"))?))
}

fn assert_agree(live: &Value, sim: &Value) {
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let (lt, st) = (
        f(live, "time_to_all_connected_s"),
        f(sim, "time_to_all_connected_s"),
    );
    assert!(
        (st - lt).abs() <= 0.25 * lt,
        "time to all connected: live {lt:.2} s, sim {st:.2} s\nlive {live:#}\nsim {sim:#}"
    );
    let (lb, sb) = (
        f(live, "sessions_max_over_mean"),
        f(sim, "sessions_max_over_mean"),
    );
    assert!(
        (sb - lb).abs() <= 0.05,
        "sessions max/mean: live {lb:.3}, sim {sb:.3}\nlive {live:#}\nsim {sim:#}"
    );
    assert_eq!(
        (&live["mode"], &sim["mode"]),
        (&Value::from("live"), &Value::from("sim"))
    );
}

#[tokio::test]
async fn cold_start_live_and_simulated_agree() -> anyhow::Result<()> {
    let (live, sim) = live_and_sim("cold-start", 20).await?;
    assert_agree(&live, &sim);
    Ok(())
}

#[tokio::test]
async fn crash_one_live_and_simulated_agree() -> anyhow::Result<()> {
    // The balance compared is the one after the crash: three collectors left.
    let (live, sim) = live_and_sim("crash-one", 40).await?;
    assert_agree(&live, &sim);
    Ok(())
}
