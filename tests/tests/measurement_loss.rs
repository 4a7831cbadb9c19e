//! In-band measurement loss (`FlowBatch.loss`): what the meter's sources count as lost reaches
//! the collector in the batches themselves, where it is summed per org
//! (`ringflow_collector_meter_loss_total{org,kind}`) and kept in the stored batches.
//!
//! The meter's own pieces are driven directly so the loss is exact rather than a matter of
//! speed: records are offered through the real `RecordsTx` into its bounded channel before the
//! batcher runs (so exactly the chunks beyond its capacity are dropped and counted), the real
//! batcher and sealer spool them with the loss, and the spooled frames, byte for byte as the
//! meter would send them, go to a real collector over loopback.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ringflow_collector::telemetry::{LossKind, OrgKindLabel};
use ringflow_meter::batcher::{self, BatchLimits, Sealer};
use ringflow_meter::observe::Progress;
use ringflow_meter::source::{self, RECORD_CHANNEL_CHUNKS};
use ringflow_meter::spool::fs::MemFs;
use ringflow_meter::spool::handle::{FsyncPolicy, SpoolRun};
use ringflow_meter::spool::{Spool, SpoolLimits};
use ringflow_meter::state::SeqAllocator;
use ringflow_meter::telemetry::MeterMetrics;
use ringflow_proto::pb;
use ringflow_tests::raw::{RawHello, RawSession};
use ringflow_tests::{ORG, TestBed};
use tokio::sync::watch;

const CHUNK_RECORDS: u32 = 10;
/// Chunks offered while the batcher is not running: those past the channel's capacity drop.
const CHUNKS: usize = RECORD_CHANNEL_CHUNKS + 36;

fn record(i: u32) -> pb::FlowRecord {
    pb::FlowRecord {
        src_addr: Bytes::from_static(&[10, 0, 0, 1]),
        dst_addr: Bytes::from_static(&[10, 0, 0, 2]),
        src_port: i % 60_000 + 1,
        dst_port: 443,
        ip_protocol: 6,
        bytes_from_src: 100,
        source: pb::SourceKind::Synthetic as i32,
        ..Default::default()
    }
}

/// Every frame the meter's pipeline spooled, in seq order, and the meter's metrics.
async fn meter_frames(state_dir: &std::path::Path) -> anyhow::Result<(Vec<Bytes>, Arc<MeterMetrics>)> {
    let metrics = Arc::new(MeterMetrics::new());
    let (records, rx) = source::channel(Arc::clone(&metrics));
    let mut accepted = 0;
    for c in 0..CHUNKS as u32 {
        let chunk = (0..CHUNK_RECORDS)
            .map(|i| record(c * CHUNK_RECORDS + i))
            .collect();
        if records.offer(chunk)? {
            accepted += 1;
        }
    }
    assert_eq!(
        accepted, RECORD_CHANNEL_CHUNKS,
        "the channel holds exactly its capacity"
    );
    // A sockets source would add these (notification overflow, a full flow table).
    records.loss().add_close_events_lost(5);
    records.loss().add_flows_untracked(2);

    let limits = SpoolLimits {
        max_bytes: 64 << 20,
        max_entries: 100_000,
        segment_bytes: 1 << 20,
        recent_bytes: 1 << 20,
    };
    let (spool, _) = Spool::open(MemFs::default(), limits)?;
    let run = SpoolRun {
        fsync: FsyncPolicy::Never,
        memory_batches: 16,
    };
    let (handle, task) =
        ringflow_meter::spool::task::start(spool, run, Arc::clone(&metrics), Progress::default());
    let spool_task = tokio::spawn(task);
    let seqs = SeqAllocator::open(state_dir)?;
    let sealer = Sealer::new(
        seqs,
        handle.clone(),
        Arc::clone(&metrics),
        Arc::clone(records.loss()),
    );
    let (_limits_tx, limits_rx) = watch::channel(BatchLimits {
        columns: Default::default(),
        max_records: 100,
        columns_max_records: 100,
        max_frame_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
    });
    drop(records);
    batcher::run(rx, Arc::new(sealer), limits_rx).await?;
    let mut reader = handle.reader();
    let mut frames = Vec::new();
    while let Some(entry) = reader.next().await? {
        frames.push(entry.frame);
    }
    drop((reader, handle));
    spool_task.await?;
    Ok((frames, metrics))
}

/// A meter whose pipeline dropped records: its batches carry the loss, and the collector's
/// per-org sum of each kind equals what the meter counted; the stored batches keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loss_a_meter_counts_is_summed_by_the_collector_per_org() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let state = tempfile::tempdir()?;
    let (frames, meter) = meter_frames(state.path()).await?;
    let dropped = MeterMetrics::count(&meter.records.records_dropped, "source_queue_full");
    assert_eq!(
        dropped,
        u64::from(CHUNK_RECORDS) * 36,
        "the chunks past the channel"
    );
    let kept = RECORD_CHANNEL_CHUNKS as u64 * u64::from(CHUNK_RECORDS);

    let collector = bed.start_collector("c1", "").await?;
    let RawHello::Welcomed(raw) = RawSession::hello(&bed, collector.addr, ORG, "lossy", &bed.token).await?
    else {
        anyhow::bail!("the meter's session was rejected");
    };
    let last_seq = frames.len() as u64;
    let wire: BytesMut = frames.iter().flat_map(|f| f.iter().copied()).collect();
    let (_send, mut reader) = raw.send_raw(wire.freeze()).await?;
    loop {
        match ringflow_tests::raw::next_reply(&mut reader).await? {
            pb::data_down::Msg::Ack(a) if a.up_to_seq >= last_seq => break,
            pb::data_down::Msg::Ack(_) => {}
            other => anyhow::bail!("expected acks, got {other:?}"),
        }
    }

    let metric = |kind: LossKind| {
        let label = OrgKindLabel {
            org: ORG.into(),
            kind: kind.as_str(),
        };
        collector.metrics.ingest.meter_loss.get_or_create(&label).get()
    };
    assert_eq!(metric(LossKind::RecordsDropped), dropped);
    assert_eq!(metric(LossKind::CloseEventsLost), 5);
    assert_eq!(metric(LossKind::FlowsUntracked), 2);
    let text = collector.metrics.encode();
    let line =
        format!(r#"ringflow_collector_meter_loss_total{{org="{ORG}",kind="records_dropped"}} {dropped}"#);
    assert!(text.contains(&line), "{text}");

    let stored = collector.stored()?;
    raw.conn.close(0u32.into(), b"done");
    collector.stop().await;
    assert_eq!(stored.len(), frames.len());
    assert_eq!(stored.iter().map(|b| b.records.len() as u64).sum::<u64>(), kept);
    let with_loss: Vec<_> = stored.iter().filter_map(|b| b.loss).collect();
    assert_eq!(with_loss.len(), 1, "taken once, in one batch: {with_loss:?}");
    assert_eq!(
        with_loss[0],
        pb::MeasurementLoss {
            close_events_lost: 5,
            flows_untracked: 2,
            records_dropped: dropped,
            packets_untracked: 0,
        }
    );
    Ok(())
}
