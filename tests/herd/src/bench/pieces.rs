//! The hot pieces on their own, in this process: the frame codec, the collector's frame judge,
//! and the file sink (its thread, group commit and fsync) behind the sink queue.
//!
//! Owns: the timed loops. The criterion benches (`tests/herd/benches/pieces.rs`) measure the same
//! pieces with the same inputs, statistically; this is the quick figure for the bench table.
//! Must never: decide what the figures mean (the report does).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringflow_collector::CollectorMetrics;
use ringflow_collector::data::ingest::{DataLimits, Verdict, judge_frame};
use ringflow_collector::data::sink::file::FileSink;
use ringflow_collector::data::sink::file::FileSinkConfig;
use ringflow_collector::data::sink::{QueueBounds, SinkBatch, SinkContext, SinkHealth, SinkOutcome, queue};
use ringflow_proto::frame;
use ringflow_proto::pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::bulk::{RECORDS_PER_BATCH, Transfer, columns_of, synthetic_batch};
use super::e2e::stored_payload;

/// Records per second of the codec and the judge.
#[derive(Debug, Clone, Copy)]
pub struct CodecRates {
    pub encode_records_per_sec: f64,
    pub decode_records_per_sec: f64,
    pub judge_records_per_sec: f64,
    /// Frame bytes per record in a 1,000-record batch of synthetic records.
    pub wire_bytes_per_record: f64,
    /// The same batch as columns (`FlowBatch.columns`) compressed at the collector's default
    /// zstd level: as the meter seals it, as the collector judges it, and its frame bytes per
    /// record; and the frame bytes per record of the columns uncompressed.
    pub columns_encode_records_per_sec: f64,
    pub columns_judge_records_per_sec: f64,
    pub columns_wire_bytes_per_record: f64,
    pub columns_plain_wire_bytes_per_record: f64,
}

/// The collector's default data limits (what a data stream judges frames against).
pub fn default_data_limits() -> DataLimits {
    let l = ringflow_collector::config::LimitsConfig::default();
    DataLimits {
        max_frame_bytes: l.max_frame_bytes as usize,
        max_records_per_batch: l.max_records_per_batch as usize,
        max_unacked_batches: l.max_unacked_batches as usize,
        max_field_bytes: l.max_field_bytes as usize,
    }
}

/// A 1,000-record batch of synthetic records as a `DataUp` message.
pub fn batch_message() -> pb::DataUp {
    pb::DataUp {
        msg: Some(pb::data_up::Msg::Batch(synthetic_batch(
            1,
            ringflow_meter::unix_nanos_now(),
        ))),
    }
}

/// Runs `step` (which handles `records` records) over and over for about `budget`; records per
/// second.
fn rate(
    budget: Duration,
    records: usize,
    mut step: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < budget || rounds == 0 {
        step()?;
        rounds += 1;
    }
    Ok(rounds as f64 * records as f64 / started.elapsed().as_secs_f64())
}

/// Encodes, decodes and judges 1,000-record batches, each for about `budget`.
pub fn codec(budget: Duration) -> anyhow::Result<CodecRates> {
    let message = batch_message();
    let limits = default_data_limits();
    // As the meter seals a batch.
    let encode = rate(budget, RECORDS_PER_BATCH, || {
        std::hint::black_box(frame::encode_to_bytes(&message, limits.max_frame_bytes)?);
        Ok(())
    })?;
    let framed = frame::encode_to_bytes(&message, limits.max_frame_bytes)?;
    let body = framed.slice(4..);
    let decode = rate(budget, RECORDS_PER_BATCH, || {
        let up: pb::DataUp = frame::decode_body(body.clone())?;
        std::hint::black_box(up);
        Ok(())
    })?;
    let judge = rate(budget, RECORDS_PER_BATCH, || {
        match judge_frame(body.clone(), 0, &limits) {
            Verdict::Accept { batch, .. } => {
                std::hint::black_box(batch);
                Ok(())
            }
            other => anyhow::bail!("the judge refused a synthetic batch: {other:?}"),
        }
    })?;
    let columns = columns_codec(budget, &message, &limits)?;
    Ok(CodecRates {
        encode_records_per_sec: encode,
        decode_records_per_sec: decode,
        judge_records_per_sec: judge,
        wire_bytes_per_record: framed.len() as f64 / RECORDS_PER_BATCH as f64,
        columns_encode_records_per_sec: columns.0,
        columns_judge_records_per_sec: columns.1,
        columns_wire_bytes_per_record: columns.2,
        columns_plain_wire_bytes_per_record: columns.3,
    })
}

/// [`codec`]'s batch as columns at the collector's default zstd level: records per second
/// sealed (columns encoded, frame written) and judged, frame bytes per record compressed and not.
fn columns_codec(
    budget: Duration,
    rows: &pb::DataUp,
    limits: &DataLimits,
) -> anyhow::Result<(f64, f64, f64, f64)> {
    let Some(pb::data_up::Msg::Batch(batch)) = &rows.msg else {
        anyhow::bail!("the synthetic message holds no batch");
    };
    let level = ringflow_collector::config::LimitsConfig::default().columns_zstd_level as i32;
    // As the meter seals a batch: the records as columns, in a frame (none copied).
    let as_columns = |level: Option<i32>| pb::DataUp {
        msg: Some(pb::data_up::Msg::Batch(columns_of(batch, level))),
    };
    let encode = rate(budget, RECORDS_PER_BATCH, || {
        std::hint::black_box(frame::encode_to_bytes(
            &as_columns(Some(level)),
            limits.max_frame_bytes,
        )?);
        Ok(())
    })?;
    let framed = frame::encode_to_bytes(&as_columns(Some(level)), limits.max_frame_bytes)?;
    let plain = frame::encode_to_bytes(&as_columns(None), limits.max_frame_bytes)?;
    let body = framed.slice(4..);
    let judge = rate(budget, RECORDS_PER_BATCH, || {
        match judge_frame(body.clone(), 0, limits) {
            Verdict::Accept { batch, records } if records as usize == RECORDS_PER_BATCH => {
                std::hint::black_box(batch);
                Ok(())
            }
            other => anyhow::bail!("the judge refused synthetic columns: {other:?}"),
        }
    })?;
    let per_record = |b: &Bytes| b.len() as f64 / RECORDS_PER_BATCH as f64;
    Ok((encode, judge, per_record(&framed), per_record(&plain)))
}

/// `records` synthetic records (1,000-record batches, as stored) through the collector's sink
/// queue into a file sink in `dir` with `config`, `in_flight` batches awaiting their ack at
/// once (a collector's data streams together); timed from the first submit to the last ack.
pub async fn file_sink(
    dir: &Path,
    config: &FileSinkConfig,
    records: u64,
    in_flight: usize,
) -> anyhow::Result<Transfer> {
    let (sink, _) = FileSink::open(dir, config)?;
    let metrics = Arc::new(CollectorMetrics::new());
    let (handle, jobs) = queue(
        QueueBounds {
            batches: 4096,
            bytes: 64 << 20,
        },
        Arc::clone(&metrics),
    );
    let ctx = SinkContext {
        health: SinkHealth::new(Arc::clone(&metrics)),
        metrics,
        abandon: CancellationToken::new(),
    };
    let running = tokio::spawn(ringflow_collector::data::sink::ConfiguredSink::new(sink).run(jobs, ctx));
    let batches = records.div_ceil(RECORDS_PER_BATCH as u64);
    let now = ringflow_meter::unix_nanos_now();
    let payloads: Vec<Bytes> = (1..=batches)
        .map(|seq| stored_payload("bench-sink", synthetic_batch(seq, now)))
        .collect();
    let bytes = payloads.iter().map(|p| p.len() as u64).sum();
    let (meter_id, org): (Arc<str>, Arc<str>) = ("bench-sink".into(), ringflow_tests::ORG.into());
    let started = Instant::now();
    let mut receipts = std::collections::VecDeque::with_capacity(in_flight);
    for (seq, payload) in (1..).zip(payloads) {
        if receipts.len() >= in_flight {
            settled(receipts.pop_front()).await?;
        }
        let batch = SinkBatch {
            org: Arc::clone(&org),
            meter_id: Arc::clone(&meter_id),
            seq,
            records: RECORDS_PER_BATCH as u32,
            payload,
            columns: false,
        };
        receipts.push_back(handle.submit(batch).await?);
    }
    while !receipts.is_empty() {
        settled(receipts.pop_front()).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(handle);
    running.await?;
    Ok(Transfer {
        records: batches * RECORDS_PER_BATCH as u64,
        bytes,
        seconds,
    })
}

async fn settled(receipt: Option<ringflow_collector::data::sink::SinkReceipt>) -> anyhow::Result<()> {
    let Some(receipt) = receipt else { return Ok(()) };
    match receipt.await? {
        SinkOutcome::Stored => Ok(()),
        SinkOutcome::Rejected(why) => anyhow::bail!("the file sink rejected a bench batch: {why}"),
    }
}
