//! The meter's disk spool end to end: `kill -9` and restarts of the real `meter` binary, a
//! collector outage that outlasts the spool's cap, and a stop with nothing acked.

use std::path::Path;
use std::time::Duration;

use ringflow_meter::MeterMetrics;

use ringflow_collector::data::sink::file::store::read_all;
use ringflow_proto::pb;
use ringflow_tests::metric_value as metric;
use ringflow_tests::process::{free_udp_addr, start_meter_process};
use ringflow_tests::{
    RunningCollector, TestBed, http_get, poll_until, start_meter, summarize, synthetic, test_reconnect,
    wait_for_meter,
};
use tokio_util::sync::CancellationToken;

const METER_BIN: &str = env!("CARGO_BIN_EXE_meter-fixture");

/// Records stored per unique `(meter_id, seq)`; fails if two copies of one batch differ (the
/// de-duplication key would then hide a loss).
fn unique_records(stored: &[pb::StoredBatch]) -> anyhow::Result<u64> {
    let mut first: std::collections::HashMap<(&str, u64), &pb::StoredBatch> = Default::default();
    for b in stored {
        let kept = first.entry((b.meter_id.as_str(), b.seq)).or_insert(b);
        anyhow::ensure!(
            kept.records == b.records,
            "two different batches stored as seq {} of {}",
            b.seq,
            b.meter_id
        );
    }
    Ok(summarize(stored).records)
}

/// Bytes of every file in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// How one run of the meter in [`kill_9_and_restarts_lose_nothing_the_meter_spooled`] goes.
struct Run {
    /// Whether the collector is up during the run (if not, the meter's spool only grows).
    collector_up: bool,
    /// SIGTERM (a clean stop) rather than SIGKILL.
    sigterm: bool,
}

/// The `meter` binary is killed with SIGKILL mid-stream three times, with the collector up (so
/// batches are in flight) and down (so unsent batches pile up in the spool), and stopped with
/// SIGTERM once, restarting each time; its last run ends by itself once its source has finished
/// and everything is acked. The collector then holds every record the meter ever accepted into
/// its spool (the meter's own lifetime count), each exactly once by `(meter_id, seq)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restarts_lose_nothing_the_meter_spooled() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let addr = free_udp_addr()?;
    let collector_config = || ringflow_collector::Config::parse(&bed.collector_toml("c1", addr, ""));
    let extra = format!(
        "{}\n[batch]\nmax_age_ms = 50\n[shutdown]\ngrace_ms = 2000\n\
         [sources.synthetic]\nenabled = true\nrecords_per_second = 20000\nflows = 500\ntotal_records = 60000\n",
        test_reconnect("")
    );
    let text = bed.meter_toml("m1", &[addr], &extra);
    let config = ringflow_meter::Config::parse(&text)?;
    let spool_dir = ringflow_meter::spool_dir(&config.state_dir);
    let config_path = bed.path().join("m1.toml");
    std::fs::write(&config_path, &text)?;
    let plan = [
        Run {
            collector_up: true,
            sigterm: false,
        },
        Run {
            collector_up: false,
            sigterm: false,
        },
        Run {
            collector_up: true,
            sigterm: true,
        },
        Run {
            collector_up: false,
            sigterm: false,
        },
    ];
    let mut collector: Option<RunningCollector> = None;
    for (i, run) in plan.iter().enumerate() {
        match (run.collector_up, collector.take()) {
            (true, None) => collector = Some(RunningCollector::start(collector_config()?).await?),
            (false, Some(c)) => c.stop().await,
            (_, c) => collector = c,
        }
        let label = format!("m1 run {}", i + 1);
        let mut meter = start_meter_process(Path::new(METER_BIN), &config_path, &label).await?;
        // Mid-stream: this run has delivered (or, with no collector, spooled) a good part of a
        // second's records, and its source (3 s of records) goes on.
        match &collector {
            Some(c) => {
                let before = c.metrics.output.records_stored.get();
                poll_until(
                    Duration::from_secs(30),
                    "the run delivers 5000 records",
                    async || c.metrics.output.records_stored.get() >= before + 5_000,
                )
                .await?
            }
            None => {
                let before = dir_bytes(&spool_dir);
                poll_until(
                    Duration::from_secs(30),
                    "the spool grows by 256 KiB",
                    async || dir_bytes(&spool_dir) >= before + (256 << 10),
                )
                .await?
            }
        }
        if run.sigterm {
            meter.sigterm()?;
            // Delivers what it can within grace_ms (2 s), then exits cleanly.
            let status = meter.wait(Duration::from_secs(10)).await?;
            assert!(status.success(), "a SIGTERM stop exits 0: {status}");
        } else {
            meter.kill();
        }
    }
    let collector = match collector {
        Some(c) => c,
        None => RunningCollector::start(collector_config()?).await?,
    };
    let last = start_meter_process(Path::new(METER_BIN), &config_path, "m1 last run").await?;
    let status = last.wait(Duration::from_secs(60)).await?;
    assert!(status.success(), "the last run ends by itself: {status}");
    collector.stop().await;

    let spool = ringflow_meter::open_spool(&config)?;
    let accepted = spool.accepted_records();
    assert_eq!(spool.pending().batches, 0, "everything was acked");
    assert_eq!(spool.dropped().records, 0, "the spool never reached its caps");
    let stored = read_all(&bed.data_dir("c1"), None)?;
    eprintln!(
        "kill -9: the meter spooled {accepted} records over 5 runs; the collector stored {} batches, \
         {} of them copies of a batch already stored",
        stored.len(),
        summarize(&stored).duplicate_batches
    );
    assert!(
        accepted > 60_000 + 2 * 5_000,
        "the killed runs spooled records too: {accepted}"
    );
    assert_eq!(
        unique_records(&stored)?,
        accepted,
        "the collector holds every record the meter spooled, once"
    );
    Ok(())
}

/// With no collector, the meter spools ten times its byte cap: the spool directory never grows
/// past the cap plus one segment, and once a collector comes up, what was dropped at the cap is
/// exactly what it produced and the collector did not get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_spool_drops_the_oldest_and_counts_them_exactly() -> anyhow::Result<()> {
    const CAP: u64 = 256 << 10;
    const SEGMENT: u64 = 64 << 10;
    const RECORDS: u64 = 150_000;
    let bed = TestBed::new()?;
    let addr = free_udp_addr()?;
    let mut config = bed.meter_config("m1", &[addr]);
    config.spool.max_bytes = CAP;
    config.spool.segment_bytes = SEGMENT;
    config.batch.max_bytes = 16 << 10;
    // Rows: the spool must take ten times its cap, and columns take a tenth of the bytes.
    config.batch.columns = false;
    config.sources.synthetic = synthetic(100_000, RECORDS);
    let spool_dir = ringflow_meter::spool_dir(&config.state_dir);
    let meter = start_meter(config.clone()).await?;
    let metrics = meter.metrics();

    // Measure the directory at every change of the spool, while it fills.
    let stop_sampling = CancellationToken::new();
    let sampler = {
        let (metrics, dir, stop) = (metrics.clone(), spool_dir.clone(), stop_sampling.clone());
        tokio::spawn(async move {
            let mut changed = metrics.changed();
            let mut largest = 0;
            loop {
                largest = largest.max(dir_bytes(&dir));
                tokio::select! {
                    r = changed.changed() => if r.is_err() { break },
                    _ = stop.cancelled() => break,
                }
            }
            largest.max(dir_bytes(&dir))
        })
    };
    let lost_before_spool =
        |m: &MeterMetrics| MeterMetrics::count(&m.records.records_dropped, "source_queue_full");
    wait_for_meter(
        &metrics,
        Duration::from_secs(60),
        "every record spooled or counted",
        |m| m.spool.spool_accepted_records.get() + lost_before_spool(m) >= RECORDS,
    )
    .await?;
    let written = metrics.spool.spool_written_bytes.get();
    assert!(
        written >= 10 * CAP,
        "the test needs 10x the cap: wrote {written} bytes"
    );
    assert!(metrics.spool.spool_dropped_records.get() > 0);

    // The collector comes up; the meter delivers what is left and stops by itself.
    let collector = RunningCollector::start(ringflow_collector::Config::parse(
        &bed.collector_toml("c1", addr, ""),
    )?)
    .await?;
    tokio::time::timeout(Duration::from_secs(60), meter.join()).await??;
    stop_sampling.cancel();
    let largest = sampler.await?;
    collector.stop().await;

    assert!(
        largest <= CAP + SEGMENT,
        "the spool directory reached {largest} bytes; cap {CAP} + one segment {SEGMENT}"
    );
    let produced = metrics.spool.spool_accepted_records.get();
    assert_eq!(produced + lost_before_spool(&metrics), RECORDS);
    let delivered = unique_records(&read_all(&bed.data_dir("c1"), None)?)?;
    eprintln!(
        "outage: wrote {written} bytes to a {CAP}-byte spool (segments {SEGMENT}); largest directory \
         {largest} bytes; produced {produced}, delivered {delivered}, dropped {}",
        metrics.spool.spool_dropped_records.get()
    );
    assert_eq!(metrics.delivery.records_acked.get(), delivered);
    assert_eq!(
        metrics.spool.spool_dropped_records.get(),
        produced - delivered,
        "dropped = produced - delivered"
    );
    // The drop count is kept in the spool, for the next start's metrics.
    assert_eq!(
        ringflow_meter::open_spool(&config)?.dropped().records,
        produced - delivered
    );
    Ok(())
}

/// A stop with no collector reachable writes everything the sources produced to the spool
/// (nothing is lost in memory) and exits within the grace period; the next start sends it all,
/// with the original seqs, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_spools_what_is_in_memory_and_the_next_start_sends_it_in_order() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let addr = free_udp_addr()?;
    let mut config = bed.meter_config("m1", &[addr]);
    config.shutdown.grace_ms = 1_000;
    config.sources.synthetic = synthetic(50_000, 0);
    let meter = start_meter(config.clone()).await?;
    let metrics = meter.metrics();
    wait_for_meter(&metrics, Duration::from_secs(30), "20000 records spooled", |m| {
        m.spool.spool_accepted_records.get() >= 20_000
    })
    .await?;
    tokio::time::timeout(Duration::from_secs(10), meter.stop()).await??;
    let dropped_in_memory: u64 = ["source_queue_full", "record_too_large", "seq_unavailable"]
        .iter()
        .map(|r| MeterMetrics::count(&metrics.records.records_dropped, r))
        .sum();
    let accepted = metrics.spool.spool_accepted_records.get();
    assert_eq!(
        metrics.records.records_generated.get(),
        accepted + dropped_in_memory,
        "every generated record is spooled or counted"
    );
    assert_eq!(metrics.delivery.records_acked.get(), 0);
    let spool = ringflow_meter::open_spool(&config)?;
    assert_eq!(spool.pending().records, accepted, "all of it is pending on disk");
    let last_seq = spool.last_seq();
    drop(spool);

    let collector = RunningCollector::start(ringflow_collector::Config::parse(
        &bed.collector_toml("c1", addr, ""),
    )?)
    .await?;
    config.sources.synthetic.enabled = false;
    let again = start_meter(config.clone()).await?;
    let metrics = again.metrics();
    tokio::time::timeout(Duration::from_secs(60), again.join()).await??;
    collector.stop().await;
    let stored = read_all(&bed.data_dir("c1"), None)?;
    assert_eq!(unique_records(&stored)?, accepted);
    assert_eq!(metrics.delivery.records_acked.get(), accepted);
    assert!(
        stored.windows(2).all(|w| w[0].seq < w[1].seq),
        "replayed in seq order, each once"
    );
    assert_eq!(
        stored.last().map(|b| b.seq),
        Some(last_seq),
        "with the seqs they were spooled under"
    );
    Ok(())
}

/// The meter's local admin endpoint answers `/healthz`, and `/metrics` shows the current
/// collector, and the spool filling up with its oldest batch ageing once the collector is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_reports_the_spool_and_the_current_collector() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let collector = bed.start_collector("c1", "").await?;
    let mut config = bed.meter_config("m1", &[collector.addr]);
    config.sources.synthetic = synthetic(2_000, 0);
    let meter = start_meter(config).await?;
    let admin = meter.admin_addr().expect("the admin endpoint is on by default");
    let metrics = meter.metrics();
    wait_for_meter(&metrics, Duration::from_secs(30), "connected and acked", |m| {
        m.connected_to().is_some() && m.delivery.records_acked.get() > 0
    })
    .await?;
    assert_eq!(http_get(admin, "/healthz").await?, (200, "ok\n".to_owned()));
    let (status, text) = http_get(admin, "/metrics").await?;
    assert_eq!(status, 200);
    let current = format!(
        "ringflow_meter_collector_info{{collector=\"{}\"}} 1",
        collector.addr
    );
    assert!(text.contains(&current), "{current} missing:\n{text}");
    for name in [
        "ringflow_meter_spool_bytes",
        "ringflow_meter_spool_batches",
        "ringflow_meter_spool_oldest_age_seconds",
        "ringflow_meter_spool_dropped_records_total",
        "ringflow_meter_spool_accepted_records_total",
        "ringflow_meter_batches_sent_total",
        "ringflow_meter_batches_acked_total",
        "ringflow_meter_records_nacked_total",
        "ringflow_meter_connect_attempts_total",
        "ringflow_meter_sessions_started_total",
    ] {
        assert!(metric(&text, name).is_some(), "{name} missing:\n{text}");
    }

    // The collector goes away: batches pile up in the spool and the oldest one ages.
    collector.stop().await;
    poll_until(
        Duration::from_secs(20),
        "the oldest spooled batch is 2 s old",
        async || {
            let scraped = http_get(admin, "/metrics").await;
            scraped.is_ok_and(|(_, t)| metric(&t, "ringflow_meter_spool_oldest_age_seconds") >= Some(2.0))
        },
    )
    .await?;
    let (_, text) = http_get(admin, "/metrics").await?;
    assert!(
        metric(&text, "ringflow_meter_spool_batches") > Some(0.0),
        "{text}"
    );
    assert!(!text.contains(&current), "no longer connected:\n{text}");
    meter.stop().await?;
    Ok(())
}
