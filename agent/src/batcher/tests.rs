//! The batcher's closing rules, splitting, the loss each batch carries, and failures.

use super::*;
use bytes::Bytes;

fn rec(i: u32) -> pb::FlowRecord {
    pb::FlowRecord {
        src_addr: Bytes::from_static(&[10, 0, 0, 1]),
        src_port: i,
        ..Default::default()
    }
}

fn limits(max_records: usize, max_frame_bytes: usize) -> BatchLimits {
    BatchLimits {
        columns: Default::default(),
        max_records,
        columns_max_records: max_records,
        max_frame_bytes,
        max_age: Duration::from_secs(1),
    }
}

#[test]
fn a_batch_of_columns_holds_more_records_within_the_collectors_limit() {
    let mine = BatchLimits {
        columns_max_records: 10_000,
        columns: Some(1),
        ..limits(1_000, 1 << 20)
    };
    assert_eq!(mine.records_limit(), 10_000);
    let rows = BatchLimits {
        columns: None,
        ..mine
    };
    assert_eq!(rows.records_limit(), 1_000);
    let collector = pb::Limits {
        max_records_per_batch: 5_000,
        ..Default::default()
    };
    assert_eq!(mine.capped_by(&collector).records_limit(), 5_000);
    assert_eq!(rows.capped_by(&collector).records_limit(), 1_000);
    // A Welcome without columns: rows, at the rows' limit.
    let welcome = pb::Welcome {
        limits: Some(collector),
        ..Default::default()
    };
    assert_eq!(mine.welcomed(&welcome).records_limit(), 1_000);
    // A Welcome with columns: columns at its level, for a meter that offers them only.
    let with_columns = pb::Welcome {
        columns: true,
        columns_zstd_level: 3,
        ..welcome
    };
    assert_eq!(mine.welcomed(&with_columns).columns, Some(3));
    assert!(!rows.offers_columns());
    assert_eq!(rows.welcomed(&with_columns).columns, None);
}

#[test]
fn closes_at_the_record_count() {
    let mut b = Batcher::new(limits(3, 1 << 20));
    let mut closed = Vec::new();
    let now = Instant::now();
    for i in 0..7 {
        b.push(rec(i), now, &mut closed);
    }
    assert_eq!(closed.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3]);
    assert_eq!(b.flush().map(|r| r.len()), Some(1));
    assert_eq!(b.flush(), None);
}

#[test]
fn closes_before_the_frame_limit_and_the_frame_really_fits() {
    let max = 300;
    let mut b = Batcher::new(limits(1_000, max));
    let mut closed = Vec::new();
    let now = Instant::now();
    for i in 0..100 {
        b.push(rec(i), now, &mut closed);
    }
    closed.extend(b.flush());
    assert!(closed.len() > 3);
    assert_eq!(closed.iter().map(Vec::len).sum::<usize>(), 100);
    for records in closed {
        let up = pb::DataUp {
            msg: Some(pb::data_up::Msg::Batch(pb::FlowBatch {
                columns: Default::default(),
                // The largest loss a batch can carry.
                loss: Some(pb::MeasurementLoss {
                    close_events_lost: u64::MAX,
                    flows_untracked: u64::MAX,
                    records_dropped: u64::MAX,
                    packets_untracked: u64::MAX,
                }),
                seq: u64::MAX,
                records,
                created_unix_nanos: u64::MAX,
            })),
        };
        let body = up.encoded_len();
        assert!(body <= max, "frame body of {body} bytes over {max}");
    }
}

#[test]
fn age_deadline_starts_with_the_first_record() {
    let mut b = Batcher::new(limits(10, 1 << 20));
    assert_eq!(b.deadline(), None);
    let t0 = Instant::now();
    let mut closed = Vec::new();
    b.push(rec(1), t0, &mut closed);
    b.push(rec(2), t0 + Duration::from_millis(500), &mut closed);
    assert_eq!(b.deadline(), Some(t0 + Duration::from_secs(1)));
    b.flush();
    assert_eq!(b.deadline(), None);
}

#[test]
fn collector_limits_only_lower() {
    let l = limits(1_000, 512 << 10);
    let theirs = pb::Limits {
        max_records_per_batch: 500,
        max_frame_bytes: 1 << 20,
        ..Default::default()
    };
    assert_eq!(l.capped_by(&theirs), limits(500, 512 << 10));
    assert_eq!(l.capped_by(&pb::Limits::default()), l);
}

fn sealer(dir: &std::path::Path, block: u64) -> (Arc<Sealer>, SpoolHandle, Arc<MeterMetrics>) {
    let (sealer, spool, metrics, _) = sealer_with_ledger(dir, block);
    (sealer, spool, metrics)
}

fn sealer_with_ledger(
    dir: &std::path::Path,
    block: u64,
) -> (Arc<Sealer>, SpoolHandle, Arc<MeterMetrics>, Arc<LossLedger>) {
    use crate::spool::handle::{FsyncPolicy, SpoolRun};
    use crate::spool::task::start;
    use crate::spool::{Spool, SpoolLimits, fs::MemFs};
    let metrics = Arc::new(MeterMetrics::new());
    let limits = SpoolLimits {
        max_bytes: 64 << 20,
        max_entries: 100_000,
        segment_bytes: 1 << 20,
        recent_bytes: 1 << 20,
    };
    let (spool, _) = Spool::open(MemFs::default(), limits).unwrap();
    let run = SpoolRun {
        fsync: FsyncPolicy::Never,
        memory_batches: 16,
    };
    let (handle, task) = start(spool, run, Arc::clone(&metrics), Default::default());
    tokio::spawn(task);
    let seqs = SeqAllocator::open_with_block(dir, block).unwrap();
    let ledger = Arc::new(LossLedger::default());
    let sealer = Sealer::new(seqs, handle.clone(), Arc::clone(&metrics), Arc::clone(&ledger));
    (Arc::new(sealer), handle, metrics, ledger)
}

/// The loss each spooled batch carries, in seq order.
fn losses(entries: &[crate::spool::Entry]) -> Vec<Option<pb::MeasurementLoss>> {
    entries
        .iter()
        .map(|e| {
            let up = pb::DataUp::decode(e.frame.slice(frame::LENGTH_PREFIX_BYTES..)).unwrap();
            match up.msg {
                Some(pb::data_up::Msg::Batch(b)) => b.loss,
                None => panic!("no batch"),
            }
        })
        .collect()
}

#[tokio::test]
async fn loss_taken_once_rides_in_exactly_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (sealer, spool, _, ledger) = sealer_with_ledger(dir.path(), 1 << 20);
    ledger.add_records_dropped(7);
    ledger.add_close_events_lost(2);
    // Split into many parts: only the first carries the loss, with what a split batch
    // already carried added.
    let carried = pb::MeasurementLoss {
        flows_untracked: 5,
        records_dropped: 1,
        ..Default::default()
    };
    let records: Vec<_> = (0..1_000).map(rec).collect();
    sealer
        .seal(records, Some(carried), &limits(100, 4_096))
        .await
        .unwrap();
    sealer
        .seal(vec![rec(1)], None, &limits(100, 4_096))
        .await
        .unwrap();
    ledger.add_flows_untracked(1);
    sealer
        .seal(vec![rec(2)], None, &limits(100, 4_096))
        .await
        .unwrap();
    spool.close().await;
    let entries = spooled(&spool).await;
    let losses = losses(&entries);
    assert!(entries.len() > 3, "{} batches", entries.len());
    let want_first = pb::MeasurementLoss {
        close_events_lost: 2,
        flows_untracked: 5,
        records_dropped: 8,
        packets_untracked: 0,
    };
    assert_eq!(losses[0], Some(want_first));
    let last = losses.len() - 1;
    assert!(losses[1..last].iter().all(Option::is_none), "{losses:?}");
    assert_eq!(
        losses[last],
        Some(pb::MeasurementLoss {
            flows_untracked: 1,
            ..Default::default()
        })
    );
    assert_eq!(ledger.take(), None, "nothing left behind");
}

#[tokio::test]
async fn loss_without_records_is_sealed_on_its_own_and_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (sealer, spool, _, ledger) = sealer_with_ledger(dir.path(), 1 << 20);
    let (tx, rx) = mpsc::channel(8);
    let (_limits_tx, limits_rx) = watch::channel(limits(10, 1 << 20));
    ledger.add_close_events_lost(3);
    let task = tokio::spawn(run(rx, Arc::clone(&sealer), limits_rx));
    // With no batch open, the loss check seals the loss alone.
    let mut status = spool.watch();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.pending_batches >= 1),
    )
    .await
    .expect("the loss was sealed alone")
    .unwrap();
    ledger.add_records_dropped(4);
    drop(tx);
    task.await.unwrap().unwrap();
    let entries = spooled(&spool).await;
    assert_eq!(entries.iter().map(|e| e.records).collect::<Vec<_>>(), vec![0, 0]);
    let close = pb::MeasurementLoss {
        close_events_lost: 3,
        ..Default::default()
    };
    let dropped = pb::MeasurementLoss {
        records_dropped: 4,
        ..Default::default()
    };
    assert_eq!(losses(&entries), vec![Some(close), Some(dropped)]);
}

/// Everything the spool holds, once it is closed.
async fn spooled(spool: &SpoolHandle) -> Vec<crate::spool::Entry> {
    let mut reader = spool.reader();
    let mut out = Vec::new();
    while let Some(e) = reader.next().await.unwrap() {
        out.push(e);
    }
    out
}

#[tokio::test]
async fn a_batch_over_the_limits_is_split_never_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (sealer, spool, metrics) = sealer(dir.path(), 1 << 20);
    let records: Vec<_> = (0..5_000).map(rec).collect();
    sealer.seal(records, None, &limits(400, 4_096)).await.unwrap();
    spool.close().await;
    let entries = spooled(&spool).await;
    for e in &entries {
        assert!(e.records <= 400, "{} records", e.records);
        assert!(e.frame.len() - frame::LENGTH_PREFIX_BYTES <= 4_096);
    }
    assert_eq!(entries.iter().map(|e| u64::from(e.records)).sum::<u64>(), 5_000);
    assert!(entries.windows(2).all(|w| w[0].seq < w[1].seq), "in seq order");
    assert_eq!(
        MeterMetrics::count(&metrics.records.records_dropped, "record_too_large"),
        0
    );
}

#[tokio::test]
async fn a_failed_seq_reservation_counts_what_it_discards_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (sealer, spool, metrics) = sealer(dir.path(), 2);
    // The next reservation cannot be written: a directory sits where the file goes.
    std::fs::remove_file(dir.path().join("seq")).unwrap();
    std::fs::create_dir_all(dir.path().join("seq/blocked")).unwrap();
    let (tx, rx) = mpsc::channel(8);
    let (_limits_tx, limits_rx) = watch::channel(limits(10, 1 << 20));
    for c in 0..5u32 {
        tx.send((0..10).map(|i| rec(c * 10 + i)).collect()).await.unwrap();
    }
    drop(tx);
    let result = run(rx, sealer, limits_rx).await;
    assert!(
        matches!(result, Err(SealError::State(StateError::Io { .. }))),
        "{result:?}"
    );
    let spooled_records: u64 = spooled(&spool).await.iter().map(|e| u64::from(e.records)).sum();
    let dropped = MeterMetrics::count(&metrics.records.records_dropped, "seq_unavailable");
    assert_eq!(spooled_records, 20, "the first block (2 seqs) was used");
    assert_eq!(
        spooled_records + dropped,
        50,
        "every record is spooled or counted"
    );
}
