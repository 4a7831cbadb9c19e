//! Flow sources: each is a task producing records into one bounded channel to the batcher.
//!
//! Owns: [`RecordsTx`], the sending end every source uses, and its when-full policy. Host sources
//! (sockets, interfaces, NetFlow) must never stall the host or wait on the network: they use
//! [`RecordsTx::offer`], which drops and counts when the pipeline is behind. Load generators (the
//! synthetic source) use [`RecordsTx::send`], which waits, so a load test measures what the
//! pipeline accepts rather than what it dropped. Must never: block on I/O in the batcher's path.

pub mod synthetic;

use std::sync::Arc;

use ringflow_proto::pb;
use tokio::sync::mpsc;

use crate::telemetry::MeterMetrics;

/// Records travel to the batcher in chunks, so the channel is not crossed once per record.
pub type RecordChunk = Vec<pb::FlowRecord>;

/// Capacity of the source → batcher channel, in chunks. With chunks of up to
/// [`synthetic::MAX_CHUNK_RECORDS`] records this bounds the records in transit.
pub const RECORD_CHANNEL_CHUNKS: usize = 64;

/// The channel between sources and the batcher.
pub fn channel(metrics: Arc<MeterMetrics>) -> (RecordsTx, mpsc::Receiver<RecordChunk>) {
    let (tx, rx) = mpsc::channel(RECORD_CHANNEL_CHUNKS);
    (RecordsTx { tx, metrics }, rx)
}

#[derive(Clone)]
pub struct RecordsTx {
    tx: mpsc::Sender<RecordChunk>,
    metrics: Arc<MeterMetrics>,
}

#[derive(Debug, thiserror::Error)]
#[error("the batcher has stopped")]
pub struct PipelineClosed;

impl RecordsTx {
    /// Hands `chunk` on without waiting. If the channel is full the chunk is dropped and counted
    /// (`records_dropped{reason="source_queue_full"}`); returns false then.
    pub fn offer(&self, chunk: RecordChunk) -> Result<bool, PipelineClosed> {
        let n = chunk.len() as u64;
        match self.tx.try_send(chunk) {
            Ok(()) => {
                self.metrics.records_generated.inc_by(n);
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.records_generated.inc_by(n);
                MeterMetrics::inc_by(&self.metrics.records_dropped, "source_queue_full", n);
                Ok(false)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PipelineClosed),
        }
    }

    /// Hands `chunk` on, waiting for room.
    pub async fn send(&self, chunk: RecordChunk) -> Result<(), PipelineClosed> {
        let n = chunk.len() as u64;
        self.tx.send(chunk).await.map_err(|_| PipelineClosed)?;
        self.metrics.records_generated.inc_by(n);
        Ok(())
    }
}
