//! What the meter's sockets source costs while this host opens 5,000 short TCP connections a
//! second: a meter process (the `meter-fixture` binary, the real `meter` command line) with only
//! the sockets source, sending to a collector in this process; the load is loopback connections
//! from this process (each sends 1,000 bytes, gets 1,000 back, closes). Prints the meter's CPU
//! as a share of one core and its resident memory after a warm-up.
//!
//! Run (release, as the figures in docs/benchmarks.md were):
//! `cargo build --release -p ringflow-tests --bins --examples && target/release/examples/sockets_cost [RATE] [SECONDS] [bpf|sock_diag] [no-owners]`
//! (the tier: `bpf` needs root; without one, the meter chooses as it does by default).

use std::time::Duration;

use ringflow_tests::TestBed;
use ringflow_tests::process::start_meter_process;
use ringflow_tests::procstat::{CpuMark, status_bytes};
use ringflow_tests::tcp_load::{Script, ScriptServer, paced_clients};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().map_or(Ok(5_000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(20), |a| a.parse())?;
    // Then the tier (`bpf` or `sock_diag`), and `no-owners` to see what owner lookup costs.
    let rest: Vec<String> = args.collect();
    let owners = !rest.iter().any(|a| a == "no-owners");
    let mode = match rest
        .iter()
        .find(|a| *a == "bpf" || *a == "sock_diag")
        .map(String::as_str)
    {
        Some("bpf") => "on",
        Some(_) => "off",
        None => "auto",
    };
    let exe = std::env::current_exe()?;
    let meter_bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("meter-fixture"))
        .ok_or_else(|| anyhow::anyhow!("no directory for {}", exe.display()))?;
    anyhow::ensure!(
        meter_bin.exists(),
        "{} is missing: build it with `cargo build --release -p ringflow-tests --bins`",
        meter_bin.display()
    );

    let bed = TestBed::new()?;
    let collector = bed.start_collector("c1", "").await?;
    let config = bed.path().join("meter.toml");
    std::fs::write(
        &config,
        bed.meter_toml(
            "sockets-cost",
            &[collector.addr],
            &format!("[sources.sockets]\nenabled = true\nowners = {owners}\n[sources.sockets.bpf]\nmode = \"{mode}\"\n"),
        ),
    )?;
    let meter = start_meter_process(&meter_bin, &config, "meter").await?;
    let pid = meter.pid();

    let stop = CancellationToken::new();
    let script = Script {
        up: 1_000,
        down: 1_000,
    };
    let server = ScriptServer::start("127.0.0.1:0", script, stop.clone()).await?;
    let load = tokio::spawn(paced_clients(server.addr, rate, script, stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored_before = stored_records(&collector)?;
    let mark = CpuMark::now(pid)?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu, wall) = mark.since()?;
    let stored = stored_records(&collector)? - stored_before;
    let (rss, peak) = (status_bytes(pid, "VmRSS")?, status_bytes(pid, "VmHWM")?);
    stop.cancel();
    let opened = load.await?;
    meter.terminate().await?;
    collector.stop().await;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "sockets source (bpf mode {mode}) at {rate} connections/s for {seconds} s ({opened} opened, owners {owners}): meter {:.2}% of one core, {:.1} MiB RSS ({:.1} MiB peak); {:.0} records/s stored",
        100.0 * cpu / wall,
        mib(rss),
        mib(peak),
        stored as f64 / wall
    );
    Ok(())
}

fn stored_records(collector: &ringflow_tests::RunningCollector) -> anyhow::Result<u64> {
    Ok(collector.stored()?.iter().map(|b| b.records.len() as u64).sum())
}
