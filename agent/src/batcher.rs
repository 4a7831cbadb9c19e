//! Batcher: groups records into batches by count, frame size and age; numbers and encodes them;
//! puts them in the queue.
//!
//! Owns: [`Batcher`], the sans-IO rule for when a batch closes (time is passed in), and
//! [`run`], the task that drives it between the source channel and the spool's memory queue
//! ([`SpoolHandle`]). A batch's frame is encoded once here; every send and resend reuses it.
//! Must never: wait on the network. When the spool's memory queue is full, sealing waits (the
//! spool makes room on disk, dropping its oldest batches at its byte cap, counted), so records
//! back up into the bounded source channel, where a full channel drops and counts them.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use ringflow_proto::frame;
use ringflow_proto::pb;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::source::RecordChunk;
use crate::spool::handle::{SpoolBatch, SpoolHandle};
use crate::state::{SeqAllocator, StateError};
use crate::telemetry::MeterMetrics;
use crate::telemetry::events::{Event, RecordTooLarge, RecordsDropped};
use crate::telemetry::{DropReason, task};

/// When a batch closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_records: usize,
    /// Largest frame body (length prefix excluded, as in `Limits.max_frame_bytes`).
    pub max_frame_bytes: usize,
    pub max_age: Duration,
}

impl BatchLimits {
    /// These limits, lowered to what a collector announced in `Welcome`.
    pub fn capped_by(self, collector: &pb::Limits) -> BatchLimits {
        let cap = |mine: usize, theirs: u32| {
            if theirs == 0 {
                mine
            } else {
                mine.min(theirs as usize)
            }
        };
        BatchLimits {
            max_records: cap(self.max_records, collector.max_records_per_batch),
            max_frame_bytes: cap(self.max_frame_bytes, collector.max_frame_bytes),
            max_age: self.max_age,
        }
    }
}

/// Bytes of a batch frame body besides its records, at most: `DataUp` tag and length,
/// `FlowBatch.seq` and `created_unix_nanos` with their tags.
const FRAME_OVERHEAD: usize = 1 + 5 + 1 + 10 + 1 + 8;

/// Encoded size of one record inside a `FlowBatch` (tag, length, body).
fn record_size(r: &pb::FlowRecord) -> usize {
    let len = r.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// The sans-IO core: records in, closed batches out.
#[derive(Debug)]
pub struct Batcher {
    limits: BatchLimits,
    records: Vec<pb::FlowRecord>,
    bytes: usize,
    opened_at: Option<Instant>,
}

impl Batcher {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            records: Vec::new(),
            bytes: FRAME_OVERHEAD,
            opened_at: None,
        }
    }

    /// New limits apply from the next record on.
    pub fn set_limits(&mut self, limits: BatchLimits) {
        self.limits = limits;
    }

    /// Adds a record; appends to `closed` every batch this closes (at most two: the current one
    /// if the record would not fit, and the new one if it is full at once).
    pub fn push(&mut self, record: pb::FlowRecord, now: Instant, closed: &mut Vec<Vec<pb::FlowRecord>>) {
        let size = record_size(&record);
        if !self.records.is_empty() && self.bytes + size > self.limits.max_frame_bytes {
            closed.extend(self.flush());
        }
        if self.records.is_empty() {
            self.opened_at = Some(now);
        }
        self.records.push(record);
        self.bytes += size;
        if self.records.len() >= self.limits.max_records {
            closed.extend(self.flush());
        }
    }

    /// When the open batch must close by age, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.limits.max_age)
    }

    /// Closes the open batch, if it has records.
    pub fn flush(&mut self) -> Option<Vec<pb::FlowRecord>> {
        self.opened_at = None;
        self.bytes = FRAME_OVERHEAD;
        (!self.records.is_empty()).then(|| std::mem::take(&mut self.records))
    }
}

/// Why a batch could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the spool has stopped")]
    SpoolStopped,
}

/// Numbers, encodes and spools batches. Shared by the batcher and the session (which re-seals a
/// spooled batch that a collector's lower limits do not allow), so seqs are allocated and handed
/// to the spool in one order.
pub struct Sealer {
    /// The seq reservation in the state directory. Locked for the whole of numbering and
    /// handing a batch to the spool, so the spool sees seqs in order whoever seals.
    seqs: tokio::sync::Mutex<SeqAllocator>,
    /// Where sealed batches go (waiting while the spool's queue is full).
    spool: SpoolHandle,
    /// Counts built batches and records dropped on the way.
    metrics: Arc<MeterMetrics>,
}

impl Sealer {
    pub fn new(seqs: SeqAllocator, spool: SpoolHandle, metrics: Arc<MeterMetrics>) -> Self {
        Self {
            seqs: tokio::sync::Mutex::new(seqs),
            spool,
            metrics,
        }
    }

    /// Spools `records` as one batch, or as several if they do not fit `limits` (a batch built
    /// under larger limits than a collector allows is split, never dropped). Only a single
    /// record larger than a whole frame is dropped, and counted. Waits while the spool's
    /// in-memory queue is full.
    pub async fn seal(&self, records: Vec<pb::FlowRecord>, limits: &BatchLimits) -> Result<(), SealError> {
        let fits = records.len() <= limits.max_records.max(1)
            && FRAME_OVERHEAD + records.iter().map(record_size).sum::<usize>() <= limits.max_frame_bytes;
        if fits {
            return self.seal_one(records, limits).await;
        }
        let mut batcher = Batcher::new(*limits);
        let mut parts = Vec::new();
        let now = Instant::now();
        for record in records {
            batcher.push(record, now, &mut parts);
        }
        parts.extend(batcher.flush());
        for part in parts {
            self.seal_one(part, limits).await?;
        }
        Ok(())
    }

    async fn seal_one(&self, records: Vec<pb::FlowRecord>, limits: &BatchLimits) -> Result<(), SealError> {
        let n = records.len() as u32;
        // Held until the spool has the batch: seqs reach the spool in order.
        let mut seqs = self.seqs.lock().await;
        let seq = seqs.next_seq()?;
        let created_unix_nanos = crate::unix_nanos_now();
        let up = pb::DataUp {
            msg: Some(pb::data_up::Msg::Batch(pb::FlowBatch {
                seq,
                records,
                created_unix_nanos,
            })),
        };
        let frame = match frame::encode_to_bytes(&up, limits.max_frame_bytes) {
            Ok(f) => f,
            Err(error) => {
                // Only a single record larger than a whole frame can get here.
                RecordTooLarge {
                    records: n,
                    error: &error,
                }
                .emit(&self.metrics);
                return Ok(());
            }
        };
        self.metrics.records.batches_built.inc();
        self.spool
            .append(SpoolBatch {
                seq,
                records: n,
                created_unix_ms: created_unix_nanos / 1_000_000,
                frame,
            })
            .await
            .map_err(|_| SealError::SpoolStopped)
    }

    /// Counts records that can no longer be batched (the meter is failing), by why.
    fn discard(&self, records: u64, why: &SealError) {
        let reason = match why {
            SealError::State(_) => DropReason::SeqUnavailable,
            SealError::SpoolStopped => DropReason::SpoolWriteFailed,
        };
        RecordsDropped { reason, records }.emit(&self.metrics);
    }
}

/// Drives a [`Batcher`]: until the source channel closes, then flushes and closes the queue.
/// `limits` may be lowered at any time (a collector's `Welcome`). If seqs can no longer be
/// reserved (the state directory failed), it counts everything it can no longer batch as dropped
/// and returns the error: the meter then stops with a failure.
pub async fn run(
    mut records_rx: mpsc::Receiver<RecordChunk>,
    sealer: Arc<Sealer>,
    mut limits: watch::Receiver<BatchLimits>,
) -> Result<(), SealError> {
    let _task = sealer.metrics.task(task::BATCHER);
    let mut batcher = Batcher::new(*limits.borrow_and_update());
    let mut closed: Vec<Vec<pb::FlowRecord>> = Vec::new();
    loop {
        let deadline = batcher.deadline();
        let open = tokio::select! {
            chunk = records_rx.recv() => match chunk {
                Some(chunk) => {
                    if limits.has_changed().unwrap_or(false) {
                        batcher.set_limits(*limits.borrow_and_update());
                    }
                    let now = Instant::now();
                    for record in chunk {
                        batcher.push(record, now, &mut closed);
                    }
                    true
                }
                None => false,
            },
            _ = crate::sleep_until(deadline), if deadline.is_some() => {
                closed.extend(batcher.flush());
                true
            }
        };
        if !open {
            // Every source has stopped: what is left becomes the last batch.
            closed.extend(batcher.flush());
        }
        let mut pending = closed.drain(..);
        while let Some(records) = pending.next() {
            let n = records.len() as u64;
            if let Err(e) = sealer.seal(records, &batcher.limits).await {
                let mut lost: u64 = n + pending.map(|r| r.len() as u64).sum::<u64>();
                lost += batcher.flush().map_or(0, |r| r.len() as u64);
                records_rx.close();
                while let Ok(chunk) = records_rx.try_recv() {
                    lost += chunk.len() as u64;
                }
                sealer.discard(lost, &e);
                sealer.spool.close().await;
                return Err(e);
            }
        }
        if !open {
            sealer.spool.close().await;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
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
            max_records,
            max_frame_bytes,
            max_age: Duration::from_secs(1),
        }
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
        (
            Arc::new(Sealer::new(seqs, handle.clone(), Arc::clone(&metrics))),
            handle,
            metrics,
        )
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
        sealer.seal(records, &limits(400, 4_096)).await.unwrap();
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
}
