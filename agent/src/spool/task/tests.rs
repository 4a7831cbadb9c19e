//! The spool task over a spool in memory, in paused time: full disks, giving up, fsync, damage.

use super::*;
use crate::spool::SpoolLimits;
use crate::spool::fs::MemFs;
use crate::spool::handle::SpoolBatch;
use bytes::Bytes;

fn batch(seq: u64) -> SpoolBatch {
    SpoolBatch {
        seq,
        records: 2,
        created_unix_ms: seq,
        frame: Bytes::from(vec![seq as u8; 100]),
    }
}

const LIMITS: SpoolLimits = SpoolLimits {
    max_bytes: 1 << 20,
    max_entries: 1_000,
    segment_bytes: 64 << 10,
    recent_bytes: 1 << 10,
};

fn started(fs: &MemFs, fsync: FsyncPolicy) -> (SpoolHandle, tokio::task::JoinHandle<()>, Arc<MeterMetrics>) {
    let (spool, _) = Spool::open(fs.clone(), LIMITS).unwrap();
    let metrics = Arc::new(MeterMetrics::new());
    let run = SpoolRun {
        fsync,
        memory_batches: 16,
    };
    let (handle, task) = start(spool, run, Arc::clone(&metrics), Progress::new());
    (handle, tokio::spawn(task), metrics)
}

async fn until(handle: &SpoolHandle, what: impl Fn(&SpoolStatus) -> bool) {
    let mut status = handle.watch();
    while !what(&status.borrow_and_update()) {
        status.changed().await.expect("the spool task runs");
    }
}

async fn read_all(handle: &SpoolHandle) -> Vec<u64> {
    let mut reader = handle.reader();
    let mut seqs = Vec::new();
    while let Some(e) = reader.next().await.unwrap() {
        seqs.push(e.seq);
    }
    seqs
}

/// A full disk loses nothing: batches wait in memory, are written in order once there is
/// room (retried every second, whatever else the task is doing), and acks keep freeing space
/// meanwhile.
#[tokio::test(start_paused = true)]
async fn a_full_disk_holds_batches_in_memory_until_there_is_room() {
    let fs = MemFs::default();
    let (handle, task, metrics) = started(&fs, FsyncPolicy::Interval(Duration::from_millis(200)));
    for seq in 1..=3 {
        handle.append(batch(seq)).await.unwrap();
    }
    until(&handle, |s| s.appended_through == 3).await;
    fs.set_full(true);
    for seq in 4..=8 {
        handle.append(batch(seq)).await.unwrap();
    }
    // Several retries (and checkpoints, and syncs) later, nothing more is written, and an
    // ack still goes through.
    tokio::time::sleep(RETRY * 3).await;
    assert_eq!(handle.status().appended_through, 3);
    assert_eq!(handle.ack(3).await.batches, 3);
    fs.set_full(false);
    until(&handle, |s| s.appended_through == 8).await;
    handle.close().await;
    assert_eq!(
        read_all(&handle).await,
        vec![4, 5, 6, 7, 8],
        "written in order, none lost"
    );
    assert_eq!(metrics.spool.spool_accepted_records.get(), 16);
    assert_eq!(metrics.spool.spool_dropped_records.get(), 0);
    drop(handle);
    task.await.unwrap();
}

/// Past the shutdown deadline with the disk still full, the task gives up when told to:
/// it ends (so the batcher is not left waiting) and counts what it could not write.
#[tokio::test(start_paused = true)]
async fn giving_up_on_a_full_disk_ends_the_task_and_counts_the_loss() {
    let fs = MemFs::default();
    let (handle, task, metrics) = started(&fs, FsyncPolicy::Never);
    fs.set_full(true);
    for seq in 1..=4 {
        handle.append(batch(seq)).await.unwrap();
    }
    tokio::time::sleep(RETRY * 2).await;
    handle.give_up();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(handle.append(batch(5)).await.is_err(), "the task is gone");
    assert_eq!(
        MeterMetrics::count(&metrics.records.records_dropped, "spool_write_failed"),
        8
    );
}

/// With `fsync = "always"`, nothing can be read back (so sent) before it is synced.
#[tokio::test(start_paused = true)]
async fn under_fsync_always_only_synced_batches_are_readable() {
    let fs = MemFs::default();
    let (handle, task, _) = started(&fs, FsyncPolicy::Always);
    fs.set_sync_fails(true);
    handle.append(batch(1)).await.unwrap();
    tokio::time::sleep(RETRY * 2).await;
    assert_eq!(
        handle.status().appended_through,
        0,
        "written, not synced: not readable"
    );
    fs.set_sync_fails(false);
    until(&handle, |s| s.appended_through == 1).await;
    handle.close().await;
    assert_eq!(read_all(&handle).await, vec![1]);
    drop(handle);
    task.await.unwrap();
}

/// A damaged segment is dropped and counted, never skipped silently: the reader gets what
/// is readable after it, and the counters say what was lost.
#[tokio::test]
async fn a_damaged_segment_is_dropped_and_counted_not_skipped() {
    let fs = MemFs::default();
    {
        let limits = SpoolLimits {
            segment_bytes: 1_024,
            recent_bytes: 0,
            ..LIMITS
        };
        let (mut spool, _) = Spool::open(fs.clone(), limits).unwrap();
        for seq in 1..=30 {
            spool
                .append(seq, 2, seq, Bytes::from(vec![seq as u8; 100]))
                .unwrap();
        }
        spool.sync().unwrap();
    }
    // Flip a byte in the middle of the first segment.
    fs.corrupt_byte(&crate::spool::format::segment_name(1), 200);
    let (handle, task, metrics) = started(&fs, FsyncPolicy::Never);
    handle.close().await;
    let seqs = read_all(&handle).await;
    let lost = metrics.spool.spool_dropped_batches.get();
    assert!(lost > 0 && !seqs.is_empty(), "{lost} dropped, {seqs:?} read");
    assert_eq!(seqs.len() as u64 + lost, 30, "every batch is read or counted");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]) && seqs.last() == Some(&30));
    drop(handle);
    task.await.unwrap();
}
