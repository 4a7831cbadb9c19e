//! The data stream's two loops: the sender (spooled batches, oldest first, while the window
//! has room; re-sealed to the collector's limits when they were built under larger ones) and
//! the receiver (acks and nacks applied to the spool, then the window).
//!
//! Owns: the order of those effects. Must never: settle a batch that was not acked or nacked.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use prost::Message;
use quinn::{RecvStream, SendStream};
use ringflow_proto::codes::StreamCode;
use ringflow_proto::frame::{self, FrameReader};
use ringflow_proto::pb;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::liveness::Liveness;
use super::streams::{LivenessWatch, lock};
use super::window::Window;
use super::{SessionContext, SessionError};
use crate::batcher::BatchLimits;
use crate::observe::AckedBatch;
use crate::telemetry::events::{BatchAcked, BatchNacked, BatchResealed, Event, RecordsDropped};

/// Writes spooled batches, oldest first, while the window has room. Returns when the spool is
/// closed and read to its end (shutdown), or when told to stop sending.
pub(super) async fn send_batches(
    send: &mut SendStream,
    ctx: &SessionContext,
    window: &Mutex<Window>,
    room: &Notify,
    sending_done: &AtomicBool,
    allowed: &BatchLimits,
    watch: &LivenessWatch<'_>,
) -> Result<(), SessionError> {
    // From the oldest pending batch: everything unacked is sent again, in order.
    let mut spooled = ctx.spool.reader();
    loop {
        loop {
            let notified = room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(window).has_room() {
                break;
            }
            notified.await;
        }
        if sending_done.load(Ordering::Relaxed) {
            return std::future::pending().await;
        }
        let Some(batch) = spooled
            .next()
            .await
            .map_err(|e| SessionError::Spool(e.to_string()))?
        else {
            return Ok(());
        };
        if sending_done.load(Ordering::Relaxed) {
            return std::future::pending().await;
        }
        let body = &batch.frame[frame::LENGTH_PREFIX_BYTES..];
        if body.len() > allowed.max_frame_bytes
            || batch.records as usize > allowed.records_limit()
            || (allowed.columns.is_none() && ringflow_proto::columns::in_data_up(body))
        {
            // Built under larger limits than this collector allows, or as columns it does not
            // read (for another collector): seal its records again as batches that fit, as this
            // collector reads them; they get new seqs and are spooled after the others.
            reseal(ctx, batch, allowed).await?;
            continue;
        }
        send.write_chunk(batch.frame).await?;
        let now = Instant::now();
        lock(window).sent(batch.seq, batch.records, now);
        watch.wrote(now);
        ctx.metrics.delivery.batches_sent.inc();
    }
}

/// Spools the records of `batch` again as batches within `allowed`, then settles `batch`. If
/// that fails, `batch` stays spooled whole and the session ends (sending past it would let a
/// cumulative ack settle it unsent).
async fn reseal(
    ctx: &SessionContext,
    batch: crate::spool::Entry,
    allowed: &BatchLimits,
) -> Result<(), SessionError> {
    let seq = batch.seq;
    let (records, loss) = match records_of(batch.frame.slice(frame::LENGTH_PREFIX_BYTES..)) {
        Some(batch) => batch,
        None => {
            // Cannot happen for a frame this meter encoded (the spool checks a CRC per entry);
            // counted rather than assumed.
            RecordsDropped {
                reason: crate::telemetry::DropReason::UndecodableSpooled,
                records: batch.records.into(),
            }
            .emit(&ctx.metrics);
            ctx.spool.remove(seq, batch.records).await;
            return Ok(());
        }
    };
    BatchResealed {
        seq,
        records: batch.records,
    }
    .emit(&ctx.metrics);
    // The batch's loss goes into the first of its parts.
    match ctx.sealer.seal(records, loss, allowed).await {
        Ok(()) => {
            ctx.spool.replaced(seq, batch.records).await;
            Ok(())
        }
        Err(error) => Err(SessionError::Spool(format!(
            "cannot spool the parts of batch {seq}: {error}"
        ))),
    }
}

/// The records (rows, or columns decoded) and loss of the batch in a spooled frame body; None
/// when it does not decode.
fn records_of(body: bytes::Bytes) -> Option<(Vec<pb::FlowRecord>, Option<pb::MeasurementLoss>)> {
    let Ok(pb::DataUp {
        msg: Some(pb::data_up::Msg::Batch(b)),
    }) = pb::DataUp::decode(body)
    else {
        return None;
    };
    if b.columns.is_empty() {
        return Some((b.records, b.loss));
    }
    let records = ringflow_proto::columns::decode(
        &b.columns,
        ringflow_proto::columns::STORED_MAX_RECORDS,
        ringflow_proto::columns::STORED_MAX_BODY_BYTES,
    )
    .ok()?;
    Some((records, b.loss))
}

/// Applies acks and nacks. Returns `Ok` once sending is done and nothing is in flight.
pub(super) async fn receive_replies(
    data: &mut FrameReader<RecvStream>,
    ctx: &SessionContext,
    window: &Mutex<Window>,
    room: &Notify,
    sending_done: &AtomicBool,
    liveness: &Mutex<Liveness>,
) -> Result<(), SessionError> {
    loop {
        let reply = match data.next_message::<pb::DataDown>().await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(SessionError::StreamClosed { code: None }),
            Err(e) => {
                if let Some(code) = e.peer_reset_code() {
                    return Err(SessionError::StreamClosed {
                        code: StreamCode::from_varint(code),
                    });
                }
                return Err(e.into());
            }
        };
        match reply.msg {
            Some(pb::data_down::Msg::Ack(ack)) => {
                // The spool first, the window after: once the window is empty the session may
                // end at any await, and the spool must have the ack by then. (The spool task
                // counts what acks settle.)
                lock(window).check_ack(ack.up_to_seq)?;
                ctx.spool.ack(ack.up_to_seq).await;
                let settled = lock(window).ack(ack.up_to_seq)?;
                let now = Instant::now();
                for batch in settled {
                    let acked = AckedBatch {
                        seq: batch.seq,
                        records: batch.records,
                        latency: now.saturating_duration_since(batch.sent_at),
                    };
                    lock(liveness).on_ack(acked.latency);
                    BatchAcked(acked).emit(&ctx.metrics);
                    if let Some(observer) = &ctx.ack_observer {
                        observer(acked);
                    }
                }
                ctx.last_acked.fetch_max(ack.up_to_seq, Ordering::Relaxed);
            }
            Some(pb::data_down::Msg::Nack(nack)) => {
                let records = lock(window).check_nack(nack.seq)?;
                let reason = pb::NackReason::try_from(nack.reason).unwrap_or_default();
                ctx.spool.remove(nack.seq, records).await;
                lock(window).nack(nack.seq)?;
                BatchNacked {
                    seq: nack.seq,
                    records,
                    reason: ringflow_proto::names::nack_reason(reason),
                    why: &nack.message,
                }
                .emit(&ctx.metrics);
            }
            None => {
                return Err(SessionError::Protocol(
                    "empty or unknown reply on the data stream".into(),
                ));
            }
        }
        ctx.progress.notify();
        room.notify_one();
        if sending_done.load(Ordering::Relaxed) && lock(window).is_empty() {
            return Ok(());
        }
    }
}
