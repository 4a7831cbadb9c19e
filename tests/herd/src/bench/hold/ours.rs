//! The ringflow side of the hold: welcomed sessions held from this process as a meter holds its
//! session, each driven by nudges: a heartbeat on the control stream when nudged (the pacer
//! keeps the `Welcome`'s interval), and one small batch on the session's data stream, waiting for
//! its ack.
//!
//! Owns: a held session's task and the small batch it sends. Must never: keep a timer of its own
//! per session (the pacers time everything) or decide what the figures mean.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use ringflow_meter::source::synthetic::FlowAddresses;
use ringflow_proto::frame::{self, FrameReader, MAX_CONTROL_FRAME_BYTES};
use ringflow_proto::pb;
use tokio::sync::mpsc;

use super::pacer::Nudge;
use crate::bench::bulk::FLOWS;
use ringflow_tests::raw::{RawSession, batch_frame, next_reply};

/// Records in each small batch.
pub const RECORDS_PER_SMALL_BATCH: usize = 10;

/// The records every small batch carries: the synthetic source's, as a meter would send them.
#[derive(Debug, Clone)]
pub struct SmallBatch {
    records: Arc<Vec<pb::FlowRecord>>,
    created_unix_nanos: u64,
}

impl SmallBatch {
    pub fn new() -> Self {
        let now = ringflow_meter::unix_nanos_now();
        let addresses = FlowAddresses::new(FLOWS);
        Self {
            records: Arc::new(
                (0..RECORDS_PER_SMALL_BATCH as u64)
                    .map(|i| addresses.record(i, now))
                    .collect(),
            ),
            created_unix_nanos: now,
        }
    }

    /// Batch `seq`, framed as a data stream carries it.
    pub fn frame(&self, seq: u64) -> Bytes {
        batch_frame(pb::FlowBatch {
            columns: Default::default(),
            loss: None,
            seq,
            records: self.records.as_ref().clone(),
            created_unix_nanos: self.created_unix_nanos,
        })
    }
}

impl Default for SmallBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// Holds `session` until its mailbox closes, then closes it. A heartbeat nudge sends a
/// `Heartbeat`; an exchange nudge sends the next small batch on the session's data stream
/// (opened at the first) and waits for its ack, counted in `acked`. The collector's heartbeat
/// answers are read as they come; anything else on the control stream is an error.
pub async fn hold_session(
    mut session: Box<RawSession>,
    mut nudges: mpsc::Receiver<Nudge>,
    batch: SmallBatch,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let conn = session.conn.clone();
    let (ctl_send, ctl_recv) = session.control();
    let mut data: Option<(SendStream, FrameReader<RecvStream>)> = None;
    let mut seq = 0u64;
    loop {
        tokio::select! {
            nudge = nudges.recv() => match nudge {
                None => break,
                Some(Nudge::Heartbeat) => ctl_send.write_chunk(heartbeat()?).await?,
                Some(Nudge::Exchange) => {
                    let (send, replies) = match &mut data {
                        Some(stream) => stream,
                        None => {
                            let (send, recv) = conn.open_bi().await?;
                            data.insert((send, FrameReader::new(recv, MAX_CONTROL_FRAME_BYTES)))
                        }
                    };
                    seq += 1;
                    send.write_chunk(batch.frame(seq)).await?;
                    match next_reply(replies).await? {
                        pb::data_down::Msg::Ack(ack) if ack.up_to_seq == seq => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        other => anyhow::bail!("batch {seq}: expected its ack, got {other:?}"),
                    }
                }
            },
            frame = ctl_recv.next_message::<pb::ControlFrame>() => match frame?.and_then(|f| f.msg) {
                Some(pb::control_frame::Msg::Heartbeat(_)) => {}
                other => anyhow::bail!("unexpected on the control stream: {other:?}"),
            },
        }
    }
    conn.close(0u32.into(), b"");
    Ok(())
}

/// A meter's heartbeat, framed.
fn heartbeat() -> anyhow::Result<Bytes> {
    let beat = pb::ControlFrame {
        msg: Some(pb::control_frame::Msg::Heartbeat(pb::Heartbeat {
            sent_unix_nanos: ringflow_meter::unix_nanos_now(),
        })),
    };
    Ok(frame::encode_to_bytes(&beat, MAX_CONTROL_FRAME_BYTES)?)
}
