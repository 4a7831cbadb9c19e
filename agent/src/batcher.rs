//! Batcher: groups records into batches by count, frame size and age; numbers and encodes them;
//! puts them in the queue.
//!
//! Owns: [`Batcher`], the sans-IO rule for when a batch closes (time is passed in), and
//! [`run`], the task that drives it between the source channel and the [`BatchQueue`]. A batch's
//! frame is encoded once here; every send and resend reuses it. Must never: wait on the network;
//! when the queue is full it drops the oldest batch (counted) rather than stall the sources.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use ringflow_proto::frame;
use ringflow_proto::pb;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::queue::{BatchQueue, QueuedBatch};
use crate::source::RecordChunk;
use crate::state::{SeqAllocator, StateError};
use crate::telemetry::MeterMetrics;

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

/// Drives a [`Batcher`]: until the source channel closes, then flushes and closes the queue.
/// `limits` may be lowered at any time (a collector's `Welcome`).
pub async fn run(
    mut records_rx: mpsc::Receiver<RecordChunk>,
    queue: Arc<BatchQueue>,
    mut seqs: SeqAllocator,
    mut limits: watch::Receiver<BatchLimits>,
    metrics: Arc<MeterMetrics>,
) -> Result<(), StateError> {
    let _task = metrics.task("batcher");
    let mut batcher = Batcher::new(*limits.borrow_and_update());
    let mut closed = Vec::new();
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
            _ = sleep_until(deadline), if deadline.is_some() => {
                closed.extend(batcher.flush());
                true
            }
        };
        if !open {
            // Every source has stopped: what is left becomes the last batch.
            closed.extend(batcher.flush());
        }
        for records in closed.drain(..) {
            if let Err(e) = seal(records, &queue, &mut seqs, &batcher.limits, &metrics) {
                queue.close();
                return Err(e);
            }
        }
        if !open {
            queue.close();
            return Ok(());
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Numbers, encodes and queues one batch.
fn seal(
    records: Vec<pb::FlowRecord>,
    queue: &BatchQueue,
    seqs: &mut SeqAllocator,
    limits: &BatchLimits,
    metrics: &MeterMetrics,
) -> Result<(), StateError> {
    let n = records.len() as u32;
    let seq = seqs.next_seq()?;
    let up = pb::DataUp {
        msg: Some(pb::data_up::Msg::Batch(pb::FlowBatch {
            seq,
            records,
            created_unix_nanos: crate::unix_nanos_now(),
        })),
    };
    let frame = match frame::encode_to_bytes(&up, limits.max_frame_bytes) {
        Ok(f) => f,
        Err(error) => {
            // Only a single record larger than a frame can get here.
            MeterMetrics::inc_by(&metrics.records_dropped, "record_too_large", u64::from(n));
            tracing::warn!(%error, records = n, "dropping a batch that cannot fit in a frame");
            return Ok(());
        }
    };
    metrics.batches_built.inc();
    let dropped = queue.push(QueuedBatch {
        seq,
        records: n,
        frame,
    });
    if !dropped.is_empty() {
        metrics.queue_dropped_batches.inc_by(dropped.len() as u64);
        metrics
            .queue_dropped_records
            .inc_by(dropped.iter().map(|b| u64::from(b.records)).sum());
    }
    Ok(())
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
}
