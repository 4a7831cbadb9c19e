//! Data plane: one task per data stream. Frames in, batches to the sink, acks out.
//!
//! Owns: [`judge_frame`], the pure decision for each frame (accept, nack, or close the stream with
//! a code), and [`serve_data_stream`], which drives it: at most `max_unacked_batches` batches in
//! flight to the sink per stream, a cumulative `Ack` sent only once the sink holds every batch up
//! to it, `Nack` for batches that can never be accepted. Tenancy comes from the session, never
//! from the payload: the org written to the sink is the authenticated one. Must never: block,
//! connect to anything, or log payloads; a bad frame closes only its own stream.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use prost::Message;
use quinn::{RecvStream, SendStream};
use ringflow_proto::codes::StreamCode;
use ringflow_proto::frame::{self, FrameReader};
use ringflow_proto::pb;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::data::sink::{SinkBatch, SinkHandle, SinkOutcome, SinkReceipt};
use crate::telemetry::{
    BatchNacked, CollectorMetrics, DataStreamClosed, MeterLossReported, OrgCounters, StreamFault, Task,
};

/// Limits applied to every frame on a data stream. Set once at start from `limits` (the frame
/// size lowered to what the sink can take), told to meters in `Welcome`, copied into every
/// session's [`StreamContext`] and read by [`judge_frame`] and the stream's ack window.
#[derive(Debug, Clone, Copy)]
pub struct DataLimits {
    /// Largest frame the stream's reader takes; a larger one closes the stream with a code
    /// before its body is buffered.
    pub max_frame_bytes: usize,
    /// Most records in one batch; more is a batch that can never be accepted (nack).
    pub max_records_per_batch: usize,
    /// Batches of one stream handed to the sink and not yet acked; at the limit the stream stops
    /// reading, and QUIC flow control pushes back to the meter.
    pub max_unacked_batches: usize,
    /// Longest text field of a record (`interface`); a longer one is nacked (`FieldTooLong`).
    pub max_field_bytes: usize,
}

/// Longest value, in bytes, of each text field a meter's host sources fill (above it a batch is
/// nacked `FieldTooLong`). Each is well above what a correct meter sends, and bounds what one
/// record can make a sink store:
/// - `process_name`: the kernel's `comm` is at most 15 bytes; 64 leaves room for a longer name
///   a future source may take from `/proc/PID/cmdline`'s first word.
/// - `cgroup`: a cgroup v2 path (Kubernetes pods nest three or four levels with 64-hex ids,
///   ~250 bytes); 1024 covers deep systemd and container-runtime nestings.
/// - `container_id`: 64 hex digits (Docker, containerd, CRI-O, Podman); 128 allows a
///   runtime prefix.
/// - `pod_uid`: a 36-character UUID; 64.
/// - `systemd_unit`: systemd's own limit on a unit name is 255 bytes; 256.
/// - `community_id`: `1:` + base64 of a SHA-1 hash is 30 bytes; 64.
pub const FIELD_LIMITS: [(&str, usize); 6] = [
    ("process_name", 64),
    ("cgroup", 1024),
    ("container_id", 128),
    ("pod_uid", 64),
    ("systemd_unit", 256),
    ("community_id", 64),
];

/// What to do with one frame.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// A valid batch (rows, or columns stored as they arrived) of `records` records: store it.
    Accept { batch: pb::FlowBatch, records: u32 },
    /// A batch that can never be accepted: tell the meter to drop it.
    Nack {
        seq: u64,
        reason: pb::NackReason,
        message: String,
    },
    /// The stream cannot go on: close it with this code.
    Close(StreamCode, String),
}

/// Reads just `DataUp.batch.seq`, skipping the records without parsing them, so a batch whose
/// records are garbage can still be named in a `Nack`.
#[derive(Clone, PartialEq, prost::Message)]
struct SeqProbe {
    #[prost(message, optional, tag = "1")]
    batch: Option<BatchSeq>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BatchSeq {
    #[prost(uint64, tag = "1")]
    seq: u64,
}

/// Judges one frame body. `last_seq` is the highest seq seen on this stream (0 before the first).
pub fn judge_frame(body: Bytes, last_seq: u64, limits: &DataLimits) -> Verdict {
    let batch = match pb::DataUp::decode(body.clone()) {
        Ok(pb::DataUp {
            msg: Some(pb::data_up::Msg::Batch(batch)),
        }) => batch,
        Ok(pb::DataUp { msg: None }) => {
            return Verdict::Close(
                StreamCode::ProtocolViolation,
                "data frame carries no batch (unknown or empty message)".into(),
            );
        }
        Err(error) => {
            return match SeqProbe::decode(body) {
                Ok(SeqProbe {
                    batch: Some(BatchSeq { seq }),
                }) if seq > last_seq => Verdict::Nack {
                    seq,
                    reason: pb::NackReason::Undecodable,
                    message: format!("records do not decode: {error}"),
                },
                _ => Verdict::Close(
                    StreamCode::MalformedFrame,
                    format!("frame does not decode: {error}"),
                ),
            };
        }
    };
    if batch.seq <= last_seq {
        return Verdict::Close(
            StreamCode::ProtocolViolation,
            format!("seq {} does not follow {} on this stream", batch.seq, last_seq),
        );
    }
    if !batch.columns.is_empty() {
        return judge_columns(batch, limits);
    }
    if batch.records.len() > limits.max_records_per_batch {
        return Verdict::Nack {
            seq: batch.seq,
            reason: pb::NackReason::TooManyRecords,
            message: format!(
                "{} records, the limit is {}",
                batch.records.len(),
                limits.max_records_per_batch
            ),
        };
    }
    for (i, r) in batch.records.iter().enumerate() {
        if let Err((reason, what)) = check_record(r, limits) {
            return Verdict::Nack {
                seq: batch.seq,
                reason,
                message: format!("record {i}: {what}"),
            };
        }
    }
    let records = batch.records.len() as u32;
    Verdict::Accept { batch, records }
}
/// Judges a batch of columns without decoding its records ([`ringflow_proto::columns::check`]):
/// the same limits and `Nack` reasons as rows.
fn judge_columns(batch: pb::FlowBatch, limits: &DataLimits) -> Verdict {
    if !batch.records.is_empty() {
        return Verdict::Nack {
            seq: batch.seq,
            reason: pb::NackReason::InvalidRecord,
            message: "the batch carries both records and columns; a batch carries one form".into(),
        };
    }
    match ringflow_proto::columns::check(&batch.columns, &limits.columns()) {
        Ok(records) => Verdict::Accept {
            batch,
            records: records as u32,
        },
        Err(invalid) => Verdict::Nack {
            seq: batch.seq,
            reason: invalid.reason,
            message: invalid.message,
        },
    }
}

impl DataLimits {
    /// What a batch of columns is held to: these limits, and a body of at most twice the frame
    /// limit once decompressed (columns take fewer bytes than the rows they stand for, which
    /// fit a frame).
    pub fn columns(&self) -> ringflow_proto::columns::Limits {
        ringflow_proto::columns::Limits {
            max_records: self.max_records_per_batch,
            max_body_bytes: self.max_frame_bytes.saturating_mul(2),
            // `interface` is not named there: it takes `max_text_bytes`.
            text_limits: &FIELD_LIMITS,
            max_text_bytes: self.max_field_bytes,
        }
    }
}

fn check_record(r: &pb::FlowRecord, limits: &DataLimits) -> Result<(), (pb::NackReason, String)> {
    let invalid = |what: String| Err((pb::NackReason::InvalidRecord, what));
    for (name, addr) in [
        ("src_addr", &r.src_addr),
        ("dst_addr", &r.dst_addr),
        ("exporter_addr", &r.exporter_addr),
    ] {
        if !matches!(addr.len(), 0 | 4 | 16) {
            return invalid(format!("{name} has {} bytes; an address has 4 or 16", addr.len()));
        }
    }
    if r.src_port > 65_535 || r.dst_port > 65_535 {
        return invalid("port above 65535".into());
    }
    if r.ip_protocol > 255 {
        return invalid(format!("ip_protocol {} above 255", r.ip_protocol));
    }
    if r.end_unix_nanos != 0 && r.end_unix_nanos < r.start_unix_nanos {
        return invalid("flow ends before it starts".into());
    }
    let too_long = |what: &str, len: usize, limit: usize| {
        Err((
            pb::NackReason::FieldTooLong,
            format!("{what} of {len} bytes, the limit is {limit}"),
        ))
    };
    if r.interface.len() > limits.max_field_bytes {
        return too_long("interface name", r.interface.len(), limits.max_field_bytes);
    }
    let texts = [
        &r.process_name,
        &r.cgroup,
        &r.container_id,
        &r.pod_uid,
        &r.systemd_unit,
        &r.community_id,
    ];
    for ((name, limit), text) in FIELD_LIMITS.iter().zip(texts) {
        if text.len() > *limit {
            return too_long(name, text.len(), *limit);
        }
    }
    Ok(())
}

/// Who is on the other end of a stream, as established by the control plane when it welcomed
/// the session. Written once there; read by every data stream of the session (shared through
/// [`StreamContext`]), never changed.
#[derive(Debug)]
pub struct SessionIdentity {
    /// The authenticated org: what batches are stored under (never the payload's claim).
    pub org: Arc<str>,
    /// The meter's id from its `Hello`: with `seq`, the sink's de-duplication key.
    pub meter_id: Arc<str>,
    /// This session's random id (in `Welcome`, in logs).
    pub session_id: String,
    /// The collector that stored the batch, recorded with it.
    pub collector_id: Arc<str>,
}

/// Everything a data-stream task needs: one per session, built by the control plane at
/// `Welcome` and shared (`Arc`) by all of the session's data streams, which only read it.
pub struct StreamContext {
    /// Who sent the stream's batches.
    pub session: Arc<SessionIdentity>,
    /// Where judged batches go; each stream submits and awaits its receipts.
    pub sink: SinkHandle,
    /// The limits every frame is judged against.
    pub limits: DataLimits,
    /// Written by the streams (frames, acks, nacks, stream errors).
    pub metrics: Arc<CollectorMetrics>,
    /// The session's org's `*_in` counters, looked up once per session, not per batch.
    pub org_counters: OrgCounters,
}

/// A batch handed to the sink (or refused) whose ack or nack has not been sent yet.
struct InFlight {
    seq: u64,
    state: InFlightState,
}

enum InFlightState {
    Waiting(SinkReceipt),
    Settled(Settlement),
}

/// How a batch ends up: stored (ack) or refused for good (nack).
#[derive(Debug, Clone, PartialEq)]
enum Settlement {
    Stored,
    Nack(pb::NackReason, String),
}

impl From<SinkOutcome> for Settlement {
    fn from(outcome: SinkOutcome) -> Self {
        match outcome {
            SinkOutcome::Stored => Settlement::Stored,
            SinkOutcome::Rejected(why) => Settlement::Nack(pb::NackReason::SinkRejected, why),
        }
    }
}

/// Why a data stream task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The meter finished the stream and everything was settled.
    Finished,
    /// Closed by us with a protocol error code.
    Closed(StreamCode),
    /// The meter reset it or the connection went away.
    Lost,
    /// Shutdown (or the sink stopped) before everything was settled.
    Stopped,
}

/// Serves one data stream until the meter finishes it, it breaks, or `stop` fires.
pub async fn serve_data_stream(
    mut send: SendStream,
    recv: RecvStream,
    ctx: Arc<StreamContext>,
    stop: CancellationToken,
) -> StreamEnd {
    let _task = ctx.metrics.task(Task::DataStream);
    let limits = ctx.limits;
    let mut reader = FrameReader::new(recv, limits.max_frame_bytes);
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(limits.max_unacked_batches);
    let mut last_seq = 0u64;
    let mut reading = true;
    let close = |send: &mut SendStream, reader: &mut FrameReader<RecvStream>, code: StreamCode| {
        let _ = reader.get_mut().stop(code.varint());
        let _ = send.reset(code.varint());
    };
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        if !reading && in_flight.is_empty() {
            // The meter finished its side and everything it sent is settled.
            let _ = send.finish();
            return StreamEnd::Finished;
        }
        tokio::select! {
            biased;
            _ = &mut stopped => {
                close(&mut send, &mut reader, StreamCode::ShuttingDown);
                return StreamEnd::Stopped;
            }
            settled = settle_front(&mut in_flight), if !in_flight.is_empty() => {
                let Some(settled) = settled else {
                    // The sink stopped without settling: nothing more can be acked here.
                    close(&mut send, &mut reader, StreamCode::ShuttingDown);
                    return StreamEnd::Stopped;
                };
                let replies = encode_replies(settled, &mut in_flight, &ctx.metrics);
                if send.write_chunk(replies).await.is_err() {
                    return StreamEnd::Lost;
                }
            }
            next = reader.next_frame(), if reading && in_flight.len() < limits.max_unacked_batches => {
                let body = match next {
                    Ok(Some(body)) => body,
                    Ok(None) => {
                        reading = false;
                        continue;
                    }
                    Err(error) => {
                        let Some(code) = error.stream_code() else {
                            return StreamEnd::Lost;
                        };
                        DataStreamClosed {
                            code,
                            cause: StreamFault::Unreadable(&error),
                        }
                        .emit(&ctx.metrics);
                        close(&mut send, &mut reader, code);
                        return StreamEnd::Closed(code);
                    }
                };
                ctx.org_counters.received_bytes((body.len() + frame::LENGTH_PREFIX_BYTES) as u64);
                ctx.metrics.ingest.frame_bytes.observe(body.len() as f64);
                match judge_frame(body.clone(), last_seq, &limits) {
                    Verdict::Accept { batch, records } => {
                        last_seq = batch.seq;
                        let seq = batch.seq;
                        let job = sink_job(&ctx, batch, records, &body);
                        // Waits while the sink queue is full: we stop reading, QUIC pushes back.
                        // Shutdown must not wait behind a sink that cannot write: the batch is
                        // then dropped unacked, and the meter sends it again elsewhere.
                        let submitted = tokio::select! {
                            receipt = ctx.sink.submit(job) => receipt.ok(),
                            _ = stop.cancelled() => None,
                        };
                        match submitted {
                            Some(receipt) => in_flight.push_back(InFlight { seq, state: InFlightState::Waiting(receipt) }),
                            None => {
                                close(&mut send, &mut reader, StreamCode::ShuttingDown);
                                return StreamEnd::Stopped;
                            }
                        }
                    }
                    Verdict::Nack { seq, reason, message } => {
                        last_seq = seq;
                        warn!(seq, reason = reason.as_str_name(), %message, "refusing batch for good (nack)");
                        in_flight.push_back(InFlight {
                            seq,
                            state: InFlightState::Settled(Settlement::Nack(reason, message)),
                        });
                    }
                    Verdict::Close(code, message) => {
                        DataStreamClosed {
                            code,
                            cause: StreamFault::Judged(&message),
                        }
                        .emit(&ctx.metrics);
                        close(&mut send, &mut reader, code);
                        return StreamEnd::Closed(code);
                    }
                }
            }
        }
    }
}

/// Waits for the oldest batch in flight to be settled. `None` if the sink dropped it.
async fn settle_front(in_flight: &mut VecDeque<InFlight>) -> Option<Settlement> {
    let front = in_flight.front_mut()?;
    match &mut front.state {
        InFlightState::Waiting(receipt) => receipt.await.ok().map(Settlement::from),
        InFlightState::Settled(settlement) => Some(settlement.clone()),
    }
}

/// Pops the settled front (whose outcome is `first`) and every batch behind it that is already
/// settled, and encodes their replies: a `Nack` for each refused one, then one cumulative `Ack`.
fn encode_replies(
    first: Settlement,
    in_flight: &mut VecDeque<InFlight>,
    metrics: &CollectorMetrics,
) -> Bytes {
    let mut out = BytesMut::new();
    let mut up_to = None;
    let mut next = Some(first);
    while let Some(settlement) = next.take() {
        let Some(entry) = in_flight.pop_front() else { break };
        if let Settlement::Nack(reason, message) = settlement {
            BatchNacked { reason }.emit(metrics);
            let nack = pb::DataDown {
                msg: Some(pb::data_down::Msg::Nack(pb::Nack {
                    seq: entry.seq,
                    reason: reason as i32,
                    message,
                })),
            };
            let _ = frame::encode(&nack, usize::MAX, &mut out);
        }
        up_to = Some(entry.seq);
        next = match in_flight.front_mut().map(|f| &mut f.state) {
            Some(InFlightState::Settled(s)) => Some(s.clone()),
            Some(InFlightState::Waiting(receipt)) => receipt.try_recv().ok().map(Settlement::from),
            None => None,
        };
    }
    if let Some(up_to_seq) = up_to {
        metrics.ingest.acks_sent.inc();
        let ack = pb::DataDown {
            msg: Some(pb::data_down::Msg::Ack(pb::Ack { up_to_seq })),
        };
        let _ = frame::encode(&ack, usize::MAX, &mut out);
    }
    out.freeze()
}

/// Counts an accepted batch and makes its sink job: the batch as stored, under the session's
/// identity.
fn sink_job(ctx: &StreamContext, batch: pb::FlowBatch, records: u32, body: &[u8]) -> SinkBatch {
    let seq = batch.seq;
    ctx.org_counters.batches.inc();
    ctx.org_counters.records.inc_by(u64::from(records));
    if let Some(loss) = &batch.loss {
        MeterLossReported {
            loss,
            meter_id: &ctx.session.meter_id,
            seq,
        }
        .emit(&ctx.org_counters);
    }
    let columns = !batch.columns.is_empty();
    if columns {
        ctx.metrics.ingest.columnar_batches_in.inc();
    }
    SinkBatch {
        org: Arc::clone(&ctx.session.org),
        meter_id: Arc::clone(&ctx.session.meter_id),
        seq,
        records,
        payload: stored_batch(&ctx.session, batch, body),
        columns,
    }
}

/// Encodes the batch as stored: the meter's records under the session's authenticated identity.
/// The records' bytes come from the frame where they are exactly what encoding them would write
/// (`ringflow_proto::stored`).
fn stored_batch(session: &SessionIdentity, batch: pb::FlowBatch, frame_body: &[u8]) -> Bytes {
    let header = pb::StoredBatch {
        org_id: session.org.to_string(),
        meter_id: session.meter_id.to_string(),
        seq: batch.seq,
        received_unix_nanos: unix_nanos_now(),
        collector_id: session.collector_id.to_string(),
        session_id: session.session_id.clone(),
        records: Vec::new(),
        loss: batch.loss,
        columns: Bytes::new(),
    };
    if !batch.columns.is_empty() {
        // Stored as it arrived: no record is decoded or encoded again.
        return Bytes::from(
            pb::StoredBatch {
                columns: batch.columns,
                ..header
            }
            .encode_to_vec(),
        );
    }
    Bytes::from(ringflow_proto::stored::encode_stored_batch(
        &header,
        &batch.records,
        frame_body,
    ))
}

pub fn unix_nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
