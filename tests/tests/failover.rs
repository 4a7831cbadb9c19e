//! Failure detection (issue 26): a meter notices a dead collector by its silence, long before
//! the QUIC idle timeout, and leaves a collector that stopped acking only when its acks stop for
//! longer than the ack bound, make-before-break. A collector that is merely slow keeps its meters.

use std::net::SocketAddr;
use std::time::Duration;

use ringflow_meter::{Meter, MeterMetrics};
use ringflow_tests::process::{CollectorProcess, free_udp_addr};
use ringflow_tests::wedge::DataPlaneWedge;
use ringflow_tests::{TestBed, start_meter, synthetic, wait_for_meter};
use tokio::time::Instant;

const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-fixture");

fn ends(meter: &Meter, reason: &'static str) -> u64 {
    MeterMetrics::count(&meter.metrics().metrics().sessions.session_ends, reason)
}

fn all_ends(meter: &Meter) -> u64 {
    [
        "silent",
        "stalled",
        "timeout",
        "moved",
        "reset",
        "closed_by_collector",
        "stream",
    ]
    .iter()
    .map(|r| ends(meter, r))
    .sum()
}

/// Waits until `meter` is connected to one of `addrs` with acks flowing; returns which.
async fn settled_on(meter: &Meter, addrs: &[SocketAddr]) -> anyhow::Result<usize> {
    let m = meter.metrics();
    wait_for_meter(&m, Duration::from_secs(30), "connected, acks flowing", |w| {
        w.connected_to().is_some() && w.metrics().delivery.records_acked.get() >= 200
    })
    .await?;
    let current = m.connected_to().unwrap_or_default();
    addrs
        .iter()
        .position(|a| a.to_string() == *current)
        .ok_or_else(|| anyhow::anyhow!("connected to {current}, not one of {addrs:?}"))
}

/// Waits until `meter` is connected to `addr`.
async fn until_connected_to(meter: &Meter, addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let want = addr.to_string();
    wait_for_meter(&meter.metrics(), within, &format!("connected to {want}"), |w| {
        w.connected_to().is_some_and(|c| *c == *want)
    })
    .await
}

/// A collector killed with SIGKILL is found silent at the meter's next batch, and the meter is
/// welcomed by the other collector. The test's bound (30 s) is half the QUIC idle timeout
/// (60 s), and the session's end is counted as `silent`, so the idle timeout played no part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_collector_is_found_silent_and_its_meter_moves_long_before_the_idle_timeout()
-> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let addrs = [free_udp_addr()?, free_udp_addr()?];
    let binary = std::path::Path::new(COLLECTOR_BIN);
    let mut collectors = [
        CollectorProcess::start(binary, &bed, "c0", addrs[0], "").await?,
        CollectorProcess::start(binary, &bed, "c1", addrs[1], "").await?,
    ];
    let mut config = bed.meter_config("m1", &addrs);
    config.sources.synthetic = synthetic(200, 0);
    let meter = start_meter(config).await?;
    let home = settled_on(&meter, &addrs).await?;
    let other = 1 - home;

    let killed_at = Instant::now();
    collectors[home].kill();
    until_connected_to(&meter, addrs[other], Duration::from_secs(30)).await?;
    eprintln!(
        "welcomed by the other collector {:?} after the kill",
        killed_at.elapsed()
    );
    assert_eq!(
        ends(&meter, "silent"),
        1,
        "the session ended by silence detection"
    );
    assert_eq!(ends(&meter, "timeout"), 0, "not by the idle timeout");
    let acked = meter.metrics().metrics().delivery.records_acked.get();
    wait_for_meter(
        &meter.metrics(),
        Duration::from_secs(30),
        "acks from the other collector",
        |w| w.metrics().delivery.records_acked.get() > acked,
    )
    .await?;
    meter.stop().await?;
    Ok(())
}

/// A collector whose data plane is wedged (no ack can be sent) but whose control plane answers:
/// for less than the ack bound (5 s by default; acks took milliseconds before) its meter stays
/// and its acks resume; wedged for good, the meter checks that the other collector answers and
/// moves there (`stalled`), without ever calling the slow one dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_collector_keeps_its_meter_while_acks_come_within_the_bound_and_loses_it_when_they_stop()
-> anyhow::Result<()> {
    const DATA_THREADS: usize = 1;
    /// Well within the 5 s ack bound.
    const SHORT_WEDGE: Duration = Duration::from_secs(2);
    let bed = TestBed::new()?;
    let extra = format!("[runtime]\ndata_threads = {DATA_THREADS}\n");
    let collectors = [
        bed.start_collector("c0", &extra).await?,
        bed.start_collector("c1", &extra).await?,
    ];
    let addrs = [collectors[0].addr, collectors[1].addr];
    let mut config = bed.meter_config("m1", &addrs);
    config.sources.synthetic = synthetic(1_000, 0);
    // The short wedge's slow acks lengthen the bound (they are what this session has seen);
    // the ceiling keeps the second wait well within the test's.
    config.reconnect.ack_timeout_max_ms = 8_000;
    let meter = start_meter(config).await?;
    let home = settled_on(&meter, &addrs).await?;
    let other = 1 - home;
    let ends_before = all_ends(&meter);

    // Slow: wedged for less than the bound. The meter stays, and acks resume there.
    let wedge = DataPlaneWedge::on(&collectors[home], DATA_THREADS).await;
    tokio::time::sleep(SHORT_WEDGE).await;
    let acked = meter.metrics().metrics().delivery.records_acked.get();
    wedge.release();
    wait_for_meter(
        &meter.metrics(),
        Duration::from_secs(30),
        "acks after the short wedge",
        |w| w.metrics().delivery.records_acked.get() > acked,
    )
    .await?;
    assert_eq!(
        meter.metrics().connected_to().as_deref(),
        Some(addrs[home].to_string().as_str()),
        "the meter stayed with the slow collector"
    );
    assert_eq!(all_ends(&meter), ends_before, "no session ended");

    // Stopped: wedged until the meter leaves.
    let wedge = DataPlaneWedge::on(&collectors[home], DATA_THREADS).await;
    let wedged_at = Instant::now();
    let moved = until_connected_to(&meter, addrs[other], Duration::from_secs(30)).await;
    eprintln!("left the wedged collector after {:?}", wedged_at.elapsed());
    wedge.release();
    moved?;
    assert_eq!(ends(&meter, "stalled"), 1, "left as stalled");
    assert_eq!(
        ends(&meter, "silent"),
        0,
        "never called dead: its control plane answered"
    );
    meter.stop().await?;
    for c in collectors {
        c.stop().await;
    }
    Ok(())
}
