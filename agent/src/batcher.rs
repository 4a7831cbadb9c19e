//! Batcher: groups records into batches by count, frame size and age; numbers and encodes them;
//! puts them in the queue.
//!
//! Owns: [`Batcher`], the sans-IO rule for when a batch closes (time is passed in), and
//! [`run`], the task that drives it between the source channel and the spool's memory queue
//! ([`SpoolHandle`]). A batch's frame is encoded once here; every send and resend reuses it.
//! Each batch sealed carries what the sources counted as lost since the previous one
//! (`FlowBatch.loss`, taken from the [`LossLedger`]); loss with no records to ride on is sealed
//! in a batch of its own once a batch's age has passed. Loss that cannot be sealed goes back to
//! the ledger.
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
use crate::source::loss::LossLedger;
use crate::spool::handle::{SpoolBatch, SpoolHandle};
use crate::state::{SeqAllocator, StateError};
use crate::telemetry::MeterMetrics;
use crate::telemetry::events::{Event, RecordTooLarge, RecordsDropped};
use crate::telemetry::{DropReason, task};

/// When a batch closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most records in a batch of rows, and in one of columns ([`BatchLimits::records_limit`]
    /// picks by `columns`).
    pub max_records: usize,
    pub columns_max_records: usize,
    /// Largest frame body (length prefix excluded, as in `Limits.max_frame_bytes`).
    pub max_frame_bytes: usize,
    pub max_age: Duration,
    /// Seal records as columns (`FlowBatch.columns`), compressed at this zstd level when above
    /// 0; None: as rows. On from the start when `batch.columns` is; the latest collector's
    /// `Welcome` then decides (see [`BatchLimits::welcomed`]).
    pub columns: Option<i32>,
}

impl BatchLimits {
    /// Most records in a batch sealed under these limits (as columns or as rows).
    pub fn records_limit(&self) -> usize {
        if self.columns.is_some() {
            self.columns_max_records
        } else {
            self.max_records
        }
    }

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
            columns_max_records: cap(self.columns_max_records, collector.max_records_per_batch),
            max_frame_bytes: cap(self.max_frame_bytes, collector.max_frame_bytes),
            max_age: self.max_age,
            columns: self.columns,
        }
    }

    /// Whether a meter sealing under these limits offers columns in its `Hello`: the meter's own
    /// limits have columns exactly when `batch.columns` is on.
    pub fn offers_columns(&self) -> bool {
        self.columns.is_some()
    }

    /// These limits (the meter's own), lowered to what `welcome` announced, with columns when
    /// the meter offers them and the collector let it, at the collector's level.
    pub fn welcomed(self, welcome: &pb::Welcome) -> BatchLimits {
        BatchLimits {
            columns: (self.offers_columns() && welcome.columns)
                .then_some(welcome.columns_zstd_level.clamp(0, 19)),
            ..self.capped_by(&welcome.limits.unwrap_or_default())
        }
    }
}

/// Bytes of a batch frame body besides its records, at most: `DataUp` tag and length,
/// `FlowBatch.seq` and `created_unix_nanos` with their tags, and `FlowBatch.loss` (tag, length,
/// four tagged varints of up to ten bytes).
const FRAME_OVERHEAD: usize = 1 + 5 + 1 + 10 + 1 + 8 + LOSS_BYTES;
const LOSS_BYTES: usize = 1 + 1 + 4 * (1 + 10);

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
        if self.records.len() >= self.limits.records_limit() {
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
    /// What the sources failed to measure; taken into each batch sealed.
    loss: Arc<LossLedger>,
}

/// `a` plus `b`, counter by counter.
fn merge_loss(a: Option<pb::MeasurementLoss>, b: Option<pb::MeasurementLoss>) -> Option<pb::MeasurementLoss> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pb::MeasurementLoss {
            close_events_lost: a.close_events_lost.saturating_add(b.close_events_lost),
            flows_untracked: a.flows_untracked.saturating_add(b.flows_untracked),
            records_dropped: a.records_dropped.saturating_add(b.records_dropped),
            packets_untracked: a.packets_untracked.saturating_add(b.packets_untracked),
        }),
        (a, b) => a.or(b),
    }
}

impl Sealer {
    /// `loss` is the ledger the sources count into (`RecordsTx::loss`).
    pub fn new(
        seqs: SeqAllocator,
        spool: SpoolHandle,
        metrics: Arc<MeterMetrics>,
        loss: Arc<LossLedger>,
    ) -> Self {
        Self {
            seqs: tokio::sync::Mutex::new(seqs),
            spool,
            metrics,
            loss,
        }
    }

    /// Gives loss that could not be sealed back to the ledger, for the next batch.
    fn give_back(&self, loss: Option<pb::MeasurementLoss>) {
        if let Some(l) = loss {
            self.loss.add_close_events_lost(l.close_events_lost);
            self.loss.add_flows_untracked(l.flows_untracked);
            self.loss.add_records_dropped(l.records_dropped);
        }
    }

    /// Seals a batch without records if the ledger holds loss (nothing else would carry it).
    pub async fn seal_loss(&self, limits: &BatchLimits) -> Result<(), SealError> {
        match self.loss.take() {
            Some(loss) => self.seal_one(Vec::new(), Some(loss), limits).await,
            None => Ok(()),
        }
    }

    /// Spools `records` as one batch, or as several if they do not fit `limits` (a batch built
    /// under larger limits than a collector allows is split, never dropped). Only a single
    /// record larger than a whole frame is dropped, and counted. Waits while the spool's
    /// in-memory queue is full. `carried` is loss a batch being split again already carried; it
    /// goes, with what the ledger holds now, into the first batch.
    pub async fn seal(
        &self,
        records: Vec<pb::FlowRecord>,
        carried: Option<pb::MeasurementLoss>,
        limits: &BatchLimits,
    ) -> Result<(), SealError> {
        let fits = records.len() <= limits.records_limit().max(1)
            && FRAME_OVERHEAD + records.iter().map(record_size).sum::<usize>() <= limits.max_frame_bytes;
        if fits {
            return self.seal_one(records, carried, limits).await;
        }
        let mut batcher = Batcher::new(*limits);
        let mut parts = Vec::new();
        let now = Instant::now();
        for record in records {
            batcher.push(record, now, &mut parts);
        }
        parts.extend(batcher.flush());
        let mut carried = carried;
        for part in parts {
            self.seal_one(part, carried.take(), limits).await?;
        }
        Ok(())
    }

    /// Seals one batch of `records` with `carried` loss plus what the ledger holds now.
    async fn seal_one(
        &self,
        records: Vec<pb::FlowRecord>,
        carried: Option<pb::MeasurementLoss>,
        limits: &BatchLimits,
    ) -> Result<(), SealError> {
        let n = records.len() as u32;
        // Held until the spool has the batch: seqs reach the spool in order.
        let mut seqs = self.seqs.lock().await;
        let seq = match seqs.next_seq() {
            Ok(seq) => seq,
            Err(e) => {
                self.give_back(carried);
                return Err(e.into());
            }
        };
        let loss = merge_loss(carried, self.loss.take());
        let created_unix_nanos = crate::unix_nanos_now();
        let batch = match limits.columns {
            Some(level) => pb::FlowBatch {
                loss,
                seq,
                records: Vec::new(),
                created_unix_nanos,
                columns: ringflow_proto::columns::encode(&records, (level > 0).then_some(level)).into(),
            },
            None => pb::FlowBatch {
                loss,
                seq,
                records,
                created_unix_nanos,
                columns: Default::default(),
            },
        };
        let up = pb::DataUp {
            msg: Some(pb::data_up::Msg::Batch(batch)),
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
                self.give_back(loss);
                return Ok(());
            }
        };
        self.metrics.records.batches_built.inc();
        let appended = self
            .spool
            .append(SpoolBatch {
                seq,
                records: n,
                created_unix_ms: created_unix_nanos / 1_000_000,
                frame,
            })
            .await;
        if appended.is_err() {
            self.give_back(loss);
            return Err(SealError::SpoolStopped);
        }
        Ok(())
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
/// `limits` may be lowered at any time (a collector's `Welcome`). While no batch is open, loss
/// the sources counted is sealed on its own every `max_age`, and once more at the end. If seqs
/// can no longer be reserved (the state directory failed), it counts everything it can no
/// longer batch as dropped and returns the error: the meter then stops with a failure.
pub async fn run(
    mut records_rx: mpsc::Receiver<RecordChunk>,
    sealer: Arc<Sealer>,
    mut limits: watch::Receiver<BatchLimits>,
) -> Result<(), SealError> {
    let _task = sealer.metrics.task(task::BATCHER);
    let mut batcher = Batcher::new(*limits.borrow_and_update());
    let mut closed: Vec<Vec<pb::FlowRecord>> = Vec::new();
    let mut loss_check = tokio::time::interval(batcher.limits.max_age.max(Duration::from_millis(1)));
    loss_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = batcher.deadline();
        let mut loss_due = false;
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
            _ = loss_check.tick(), if deadline.is_none() => {
                loss_due = true;
                true
            }
        };
        if !open {
            // Every source has stopped: what is left becomes the last batch.
            closed.extend(batcher.flush());
            loss_due = true;
        }
        let mut sealed = seal_closed(&sealer, &mut closed, &batcher.limits).await;
        if sealed.is_ok() && loss_due {
            sealed = sealer.seal_loss(&batcher.limits).await.map_err(|e| (e, 0));
        }
        if let Err((e, mut lost)) = sealed {
            lost += batcher.flush().map_or(0, |r| r.len() as u64);
            records_rx.close();
            while let Ok(chunk) = records_rx.try_recv() {
                lost += chunk.len() as u64;
            }
            sealer.discard(lost, &e);
            sealer.spool.close().await;
            return Err(e);
        }
        if !open {
            sealer.spool.close().await;
            return Ok(());
        }
    }
}

/// Seals every closed batch in order; on failure, the error and how many records were not
/// sealed (the failed batch's and those after it).
async fn seal_closed(
    sealer: &Sealer,
    closed: &mut Vec<Vec<pb::FlowRecord>>,
    limits: &BatchLimits,
) -> Result<(), (SealError, u64)> {
    let mut pending = closed.drain(..);
    while let Some(records) = pending.next() {
        let n = records.len() as u64;
        if let Err(e) = sealer.seal(records, None, limits).await {
            return Err((e, n + pending.map(|r| r.len() as u64).sum::<u64>()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
