//! End-to-end delivery over loopback QUIC: what a meter sends is what the collector stores.

use std::time::Duration;

use ringflow_collector::data::sink::file::store::read_all;
use ringflow_meter::source::synthetic::bytes_from_src;
use ringflow_tests::process::{CollectorProcess, free_udp_addr};
use ringflow_tests::{TestBed, start_meter, summarize, synthetic, wait_for_meter};

const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-fixture");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_delivers_exactly_100k_records_each_once() -> anyhow::Result<()> {
    const TOTAL: u64 = 100_000;
    let bed = TestBed::new()?;
    let collector = bed.start_collector("c1", "").await?;
    let mut config = bed.meter_config("m1", &[collector.addr]);
    config.sources.synthetic = synthetic(1_000_000, TOTAL);
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    wait_for_meter(&metrics, Duration::from_secs(120), "100,000 records acked", |m| {
        m.delivery.records_acked.get() >= TOTAL
    })
    .await?;
    // Its only source has finished and everything is acked: the meter stops by itself.
    tokio::time::timeout(Duration::from_secs(30), meter.join()).await??;
    collector.stop().await;

    let stored = read_all(&bed.data_dir("c1"), None)?;
    let s = summarize(&stored);
    assert_eq!(s.records, TOTAL, "records stored");
    assert_eq!(s.duplicate_batches, 0, "no batch stored twice");
    assert_eq!(stored.iter().map(|b| b.records.len() as u64).sum::<u64>(), TOTAL);
    assert_eq!(s.batches as u64, metrics.records.batches_built.get());
    assert_eq!(
        s.bytes_from_src,
        (0..TOTAL).map(bytes_from_src).sum::<u64>(),
        "record contents intact"
    );
    assert!(
        stored
            .iter()
            .all(|b| b.meter_id == "m1" && b.org_id == ringflow_tests::ORG)
    );
    assert_eq!(metrics.delivery.records_acked.get(), TOTAL, "nothing acked twice");
    Ok(())
}

/// The collector process is killed (SIGKILL) mid-stream and started again on the same data
/// directory: everything the meter saw acked is stored, and the meter carries on by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_batches_survive_a_collector_kill_and_the_meter_resumes() -> anyhow::Result<()> {
    const TOTAL: u64 = 150_000;
    let bed = TestBed::new()?;
    let addr = free_udp_addr()?;
    let binary = std::path::Path::new(COLLECTOR_BIN);
    let mut collector = CollectorProcess::start(binary, &bed, "c1", addr, "").await?;

    let mut config = bed.meter_config("m1", &[addr]);
    config.sources.synthetic = synthetic(30_000, TOTAL);
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    wait_for_meter(&metrics, Duration::from_secs(60), "a third acked", |m| {
        m.delivery.records_acked.get() >= TOTAL / 3
    })
    .await?;

    collector.kill();
    let acked_at_kill = metrics.delivery.batches_acked.get();
    let stored_at_kill = summarize(&read_all(&bed.data_dir("c1"), None)?);
    // Every batch acked before the kill is on disk, with nothing but the kill in between.
    assert!(
        stored_at_kill.batches as u64 >= acked_at_kill,
        "acked {acked_at_kill} batches, but only {} survived the kill",
        stored_at_kill.batches
    );

    let collector = CollectorProcess::start(binary, &bed, "c1", addr, "").await?;
    wait_for_meter(
        &metrics,
        Duration::from_secs(120),
        "all records acked after the restart",
        |m| m.delivery.records_acked.get() >= TOTAL,
    )
    .await?;
    meter.stop().await?;
    let status = collector.terminate().await?;
    assert!(status.success(), "collector exits cleanly on SIGTERM: {status:?}");

    let s = summarize(&read_all(&bed.data_dir("c1"), None)?);
    assert_eq!(s.records, TOTAL, "every record stored (at least once)");
    assert_eq!(s.batches as u64, metrics.records.batches_built.get());
    assert_eq!(s.bytes_from_src, (0..TOTAL).map(bytes_from_src).sum::<u64>());
    assert!(
        metrics.sessions.sessions_started.get() >= 2,
        "the meter reconnected by itself"
    );
    let ends = |reason| {
        metrics
            .sessions
            .session_ends
            .get_or_create(&ringflow_meter::telemetry::ReasonLabel { reason })
            .get()
    };
    assert_eq!(
        (ends("reset"), ends("timeout")),
        (1, 0),
        "the restarted collector should reset the old connection (same data_dir, same reset key) \
         rather than leave the meter to time out"
    );
    assert_eq!(metrics.spool.spool_dropped_batches.get(), 0);
    Ok(())
}

/// More data than the store's byte cap: disk use stays at or below cap + one segment, and the
/// drop counters equal exactly what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_byte_cap_holds_and_counts_what_it_drops() -> anyhow::Result<()> {
    const SEGMENT: u64 = 64 << 10;
    const CAP: u64 = 256 << 10;
    const TOTAL: u64 = 40_000;
    let bed = TestBed::new()?;
    let extra = format!("[sink.file]\nsegment_bytes = {SEGMENT}\nmax_bytes = {CAP}\nfsync = \"never\"\n");
    let collector = bed.start_collector("c1", &extra).await?;
    let mut config = bed.meter_config("m1", &[collector.addr]);
    config.sources.synthetic = synthetic(1_000_000, TOTAL);
    config.batch.max_records = 200;
    // Rows: the cap must be passed many times over, and columns take a tenth of the bytes.
    config.batch.columns = false;
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    wait_for_meter(&metrics, Duration::from_secs(120), "all records acked", |m| {
        m.delivery.records_acked.get() >= TOTAL
    })
    .await?;
    meter.stop().await?;
    let cm = collector.metrics.clone();
    collector.stop().await;

    let segments = bed.data_dir("c1").join("segments").join(ringflow_tests::ORG);
    let disk: u64 = std::fs::read_dir(&segments)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(
        disk <= CAP + SEGMENT,
        "{disk} bytes on disk, cap {CAP} + one segment {SEGMENT}"
    );
    let stored = read_all(&bed.data_dir("c1"), None)?;
    let s = summarize(&stored);
    assert_eq!(s.duplicate_batches, 0);
    assert!(cm.store.store_dropped_segments.get() > 0, "the cap was reached");
    assert_eq!(
        s.batches as u64 + cm.store.store_dropped_batches.get(),
        metrics.delivery.batches_acked.get()
    );
    assert_eq!(s.records + cm.store.store_dropped_records.get(), TOTAL);
    Ok(())
}

/// A collector shutting down drains its meters; they finish in-flight batches and move to the
/// next collector without losing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_collector_hands_its_meter_to_the_next() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let a = bed.start_collector("a", "").await?;
    let b = bed.start_collector("b", "").await?;
    // The ring decides which one the meter starts on; drain that one.
    let ring = ringflow_meter::ring::Ring::new([a.addr.to_string(), b.addr.to_string()]);
    let (home, other) = if **ring.first("m1").unwrap() == *a.addr.to_string() {
        (a, b)
    } else {
        (b, a)
    };
    let mut config = bed.meter_config("m1", &[home.addr, other.addr]);
    config.sources.synthetic = synthetic(20_000, 0);
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    wait_for_meter(
        &metrics,
        Duration::from_secs(60),
        "records acked by its first choice",
        |m| m.delivery.records_acked.get() >= 5_000,
    )
    .await?;
    assert_eq!(home.metrics.sessions.sessions_active.get(), 1);
    home.stop().await;
    let acked = metrics.delivery.records_acked.get();
    wait_for_meter(
        &metrics,
        Duration::from_secs(60),
        "records acked by the other",
        |m| m.delivery.records_acked.get() >= acked + 5_000,
    )
    .await?;
    assert_eq!(other.metrics.sessions.sessions_active.get(), 1, "the meter moved");
    meter.stop().await?;
    other.stop().await;

    let mut stored = read_all(&bed.data_dir("a"), None)?;
    stored.extend(read_all(&bed.data_dir("b"), None)?);
    let s = summarize(&stored);
    assert_eq!(
        s.records,
        metrics.records.records_generated.get(),
        "nothing lost across the move"
    );
    assert_eq!(
        metrics
            .sessions
            .session_ends
            .get_or_create(&ringflow_meter::telemetry::ReasonLabel { reason: "drained" })
            .get(),
        1
    );
    Ok(())
}

/// A meter that batched under its own large limits while no collector was reachable meets a
/// collector with much smaller limits: the queued batches are split to fit, nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_built_before_welcome_are_split_to_the_collectors_limits() -> anyhow::Result<()> {
    const TOTAL: u64 = 20_000;
    let bed = TestBed::new()?;
    let addr = free_udp_addr()?;
    let mut config = bed.meter_config("m1", &[addr]);
    config.batch.max_records = 5_000;
    config.batch.max_bytes = 1 << 20;
    config.sources.synthetic = synthetic(1_000_000, TOTAL);
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    // No collector yet: wait until all records are batched and queued.
    wait_for_meter(&metrics, Duration::from_secs(30), "everything generated", |m| {
        m.records.records_generated.get() >= TOTAL
    })
    .await?;

    let extra =
        "[limits]\nmax_frame_bytes = 4096\nstream_receive_window = 8192\nmax_records_per_batch = 50\n";
    let mut collector_config = bed.collector_config("c1", extra)?;
    collector_config.listen = addr;
    let collector = ringflow_tests::RunningCollector::start(collector_config).await?;
    tokio::time::timeout(Duration::from_secs(60), meter.join()).await??;
    let cm = collector.metrics.clone();
    collector.stop().await;

    assert_eq!(metrics.delivery.records_acked.get(), TOTAL);
    assert!(
        metrics.delivery.batches_resealed.get() > 0,
        "queued batches were split"
    );
    assert_eq!(
        ringflow_collector::CollectorMetrics::count(&cm.ingest.nacks, "too_many_records"),
        0,
        "nothing over the limits was sent"
    );
    let s = summarize(&read_all(&bed.data_dir("c1"), None)?);
    assert_eq!(s.records, TOTAL);
    assert_eq!(s.bytes_from_src, (0..TOTAL).map(bytes_from_src).sum::<u64>());
    Ok(())
}
