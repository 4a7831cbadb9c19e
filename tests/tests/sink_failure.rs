//! A collector whose disk fails: it acks nothing it has not written, says it is not ready,
//! resumes by itself when the disk recovers, and still shuts down within its bounds.

use std::time::Duration;

use ringflow_proto::frame::FrameReader;
use ringflow_proto::pb;
use ringflow_tests::raw::{RawHello, RawSession, batch_frames};
use ringflow_tests::{ORG, TestBed, http_get};

async fn next_ack(
    reader: &mut FrameReader<quinn::RecvStream>,
    within: Duration,
) -> anyhow::Result<Option<u64>> {
    match tokio::time::timeout(within, reader.next_message::<pb::DataDown>()).await {
        Err(_) => Ok(None),
        Ok(msg) => match msg?.and_then(|d| d.msg) {
            Some(pb::data_down::Msg::Ack(a)) => Ok(Some(a.up_to_seq)),
            other => anyhow::bail!("expected an ack, got {other:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_holds_acks_and_shutdown_stays_bounded() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let collector = bed.start_collector("c1", "[sink]\nqueue_batches = 1\n").await?;
    // Every write fails: where the org's segment directory should go, there is a file.
    let blocker = bed.data_dir("c1").join("segments").join(ORG);
    std::fs::write(&blocker, b"not a directory")?;

    let RawHello::Welcomed(raw) = RawSession::hello(&bed, collector.addr, ORG, "raw", &bed.token).await?
    else {
        anyhow::bail!("rejected");
    };
    let (mut send, mut reader) = raw.send_raw(batch_frames(1..=8, 10)).await?;
    // The sink retries every second; over three seconds nothing may be acked.
    assert_eq!(
        next_ack(&mut reader, Duration::from_secs(3)).await?,
        None,
        "acked a batch it could not write"
    );
    assert!(collector.metrics.sink.sink_write_errors.get() >= 2);
    let (status, body) = http_get(collector.admin_addr, "/readyz").await?;
    assert_eq!((status, body.trim()), (503, "not ready: sink unavailable"));

    // The disk recovers: acks resume by themselves, for every batch.
    std::fs::remove_file(&blocker)?;
    let mut acked = 0;
    while acked < 8 {
        acked = next_ack(&mut reader, Duration::from_secs(10))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no ack after the disk recovered"))?;
    }
    assert_eq!(http_get(collector.admin_addr, "/readyz").await?.0, 200);

    // It fails again, with batches queued: shutdown still completes within grace + flush bounds.
    std::fs::remove_dir_all(&blocker)?;
    std::fs::write(&blocker, b"not a directory")?;
    send.write_chunk(batch_frames(9..=16, 10)).await?;
    assert_eq!(next_ack(&mut reader, Duration::from_secs(2)).await?, None);
    drop(raw);
    tokio::time::timeout(Duration::from_secs(30), collector.stop())
        .await
        .map_err(|_| anyhow::anyhow!("collector shutdown hung behind a failing sink"))?;
    Ok(())
}

/// A tmpfs of `bytes` mounted at `dir` for the test's duration (mounting needs root, as CI has).
struct SmallFilesystem(std::path::PathBuf);

impl SmallFilesystem {
    fn mount(dir: &std::path::Path, bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "ringflow-test"])
            .arg(dir)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "cannot mount a tmpfs at {} ({status}): this test fills a real filesystem and needs root, as CI runs",
            dir.display()
        );
        Ok(Self(dir.to_owned()))
    }

    /// Bytes still free.
    fn available(&self) -> anyhow::Result<u64> {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("cannot read df's answer: {text}"))
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A real full disk: the collector's data_dir on a small tmpfs that a meter fills. The collector
/// stops acking and is not ready while no byte more fits, writes nothing torn, resumes by itself
/// when space returns, and every record the meter had acked is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acks_until_space_returns_and_loses_nothing_acked() -> anyhow::Result<()> {
    use ringflow_tests::{RunningCollector, poll_until, start_meter, synthetic, wait_for_meter};
    const TOTAL: u64 = 60_000;
    let bed = TestBed::new()?;
    let small = SmallFilesystem::mount(&bed.path().join("small"), 8 << 20)?;
    let data_dir = small.0.join("data");
    let text = bed
        .collector_toml("c1", std::net::SocketAddr::from(([127, 0, 0, 1], 0)), "")
        .replace(
            &format!("data_dir = \"{}\"", bed.data_dir("c1").display()),
            &format!("data_dir = \"{}\"", data_dir.display()),
        )
        + "[sink.file]\nsegment_bytes = 1048576\nmax_bytes = 67108864\n";
    let collector = RunningCollector::start(ringflow_collector::Config::parse(&text)?).await?;
    let cm = collector.metrics.clone();
    // Leave about 1.5 MiB: the meter's records need about 4 MiB.
    let ballast = small.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; (small.available()? - (3 << 19)) as usize])?;

    let mut config = bed.meter_config("m1", &[collector.addr]);
    config.sources.synthetic = synthetic(20_000, TOTAL);
    // Rows: the sizes above are reckoned for them (as columns the records take a tenth).
    config.batch.columns = false;
    let meter = start_meter(config).await?;
    let metrics = meter.metrics();
    // The disk fills: writes fail and the collector says it is not ready. (The collector's
    // counters and readiness have no change signal: they are polled.)
    let readyz = async || http_get(collector.admin_addr, "/readyz").await.ok();
    poll_until(
        Duration::from_secs(10),
        "the collector reports the full disk",
        async || {
            cm.sink.sink_write_errors.get() > 0 && readyz().await.is_some_and(|(status, _)| status == 503)
        },
    )
    .await?;
    let (_, body) = readyz()
        .await
        .ok_or_else(|| anyhow::anyhow!("/readyz did not answer"))?;
    assert_eq!(body.trim(), "not ready: sink unavailable");
    // While nothing fits, nothing more is acked: the sink retries (every second) and fails.
    let acked = metrics.delivery.records_acked.get();
    let errors = cm.sink.sink_write_errors.get();
    poll_until(Duration::from_secs(20), "two more failed retries", async || {
        cm.sink.sink_write_errors.get() >= errors + 2
    })
    .await?;
    assert_eq!(
        metrics.delivery.records_acked.get(),
        acked,
        "acked while the disk was full"
    );
    assert!(acked < TOTAL);

    // Space returns: acks resume by themselves and every record arrives.
    std::fs::remove_file(&ballast)?;
    wait_for_meter(&metrics, Duration::from_secs(60), "every record acked", |m| {
        m.delivery.records_acked.get() >= TOTAL
    })
    .await?;
    assert_eq!(http_get(collector.admin_addr, "/readyz").await?.0, 200);
    meter.stop().await?;
    collector.stop().await;

    // Nothing torn, nothing acked missing: every (meter, seq) once, TOTAL records.
    let stored = ringflow_collector::data::sink::file::store::read_all(&data_dir, None)?;
    let seqs: std::collections::HashSet<u64> = stored.iter().map(|b| b.seq).collect();
    assert_eq!(seqs.len(), stored.len(), "no batch stored twice");
    let records: usize = stored.iter().map(|b| b.records.len()).sum();
    assert_eq!(records as u64, TOTAL, "stored records = records acked");
    Ok(())
}
