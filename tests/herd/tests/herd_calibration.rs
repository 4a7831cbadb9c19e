//! Calibration: the same small scenario run live (`herd run`: real collectors and meters on
//! loopback) and simulated (`herd sim`, given what the live run measured: the handshakes the
//! collectors sustained while the herd connected, when the herd's meters first dialled, their
//! accept rate, the port, so the same meters land on the same collectors) agree on
//! `time_to_all_connected_s` within 25% and on `sessions_max_over_mean` within 0.05. Runs alone
//! (see `.config/nextest.toml`): the live half measures this machine.
//!
//! Two inputs come from the live run because one process holds every meter there, and the
//! simulation models the fleet, not that process:
//! - **Service rate:** what the collectors sustained while the herd connected (the report's
//!   `handshakes_sustained_per_s`), not the capacity the probe measured before the herd: the
//!   herd's meters (thousands of pipelines starting, their TLS client work) share the machine,
//!   so during a herd the collectors complete fewer handshakes than with the probe's one light
//!   client. On a slower 2-core machine the probe's figure made the simulation finish in
//!   3.1-3.6 s where the live run took 4.6-6.3 s, three runs of three.
//! - **Arrivals:** when each tenth of the herd first dialled (`meters_dialled`), not a uniform
//!   start over the start-up spread followed by each meter's splay. With the CPU short, the
//!   meters start fast but dial late and unevenly (their first DNS lookups and tasks wait their
//!   turn): with the CPU held to 1.2 cores, 1,218 of 1,800 had started 0.4 s into the herd and 42
//!   had dialled, and the uniform model finished 13-29% early.

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

/// What the simulation needs from a live run's timeline: its port, and when each further tenth
/// of the herd's meters first dialled, ms after the herd's release ("herd: N meters"): the first
/// sample at which the meters that had dialled (`meters_dialled`, less those that had before the
/// release) reached each tenth.
fn live_setting(timeline: &Value) -> anyhow::Result<(u16, Vec<u64>)> {
    let port = timeline["addresses"][0]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no collector address in timeline.json"))?;
    let herd = timeline["events"]
        .as_array()
        .and_then(|e| {
            e.iter().find(|e| {
                e["what"]
                    .as_str()
                    .is_some_and(|w| w.starts_with(ringflow_herd::live::HERD_EVENT_PREFIX))
            })
        })
        .and_then(|e| e["t_s"].as_f64())
        .ok_or_else(|| anyhow::anyhow!("no herd event in timeline.json"))?;
    let samples: Vec<(f64, f64)> = timeline["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["t_s"].as_f64()?, s["meters_dialled"].as_f64()?)))
        .collect();
    let before = samples
        .iter()
        .take_while(|(t, _)| *t < herd)
        .last()
        .map_or(0.0, |s| s.1);
    let herd_meters = METERS as f64 - before;
    let tenths = (1..=10)
        .map(|q| {
            samples
                .iter()
                .find(|(t, dialled)| *t >= herd && dialled - before >= herd_meters * q as f64 / 10.0)
                .map(|(t, _)| ((t - herd) * 1_000.0).round() as u64)
                .ok_or_else(|| anyhow::anyhow!("the herd's meters did not all dial"))
        })
        .collect::<anyhow::Result<Vec<u64>>>()?;
    Ok((port, tenths))
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
    let (port, first_dials) = live_setting(&json(&live.join("timeline.json"))?)?;
    let capacity = live_report["handshakes_sustained_per_s"].as_f64().unwrap_or(0.0) / COLLECTORS as f64;
    anyhow::ensure!(
        capacity > 0.0,
        "the live run completed no handshakes while the herd connected: {live_report:#}"
    );
    println!(
        "simulated with {capacity:.0} handshakes/s per collector (live, sustained), first dials {first_dials:?} ms"
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
        "--first-dials-ms".into(),
        first_dials
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
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
