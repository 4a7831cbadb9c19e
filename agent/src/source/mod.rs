//! Flow sources: each is a task producing records into one bounded channel to the batcher.
//!
//! Owns: [`RecordsTx`], the sending end every source uses, and its when-full policy. Host sources
//! (sockets, interfaces, NetFlow) must never stall the host or wait on the network: they use
//! [`RecordsTx::offer`], which drops and counts when the pipeline is behind. Load generators (the
//! synthetic source) use [`RecordsTx::send`], which waits, so a load test measures what the
//! pipeline accepts rather than what it dropped. Must never: block on I/O in the batcher's path.

pub mod bpf;
pub mod interfaces;
pub mod loss;
pub mod netflow;
pub mod owner;
pub mod sockets;
pub mod synthetic;

use std::sync::Arc;

use ringflow_proto::pb;
use tokio::sync::mpsc;

use crate::config::SourcesConfig;
use crate::observe::Progress;
use crate::telemetry::events::{Event, RecordsDropped, SocketsTier};
use crate::telemetry::{DropReason, MeterMetrics, task};

/// Starts every enabled source on `tasks`, each with its own clone of `records`; they stop when
/// `stop` fires (a synthetic source with a total also stops by itself). `netflow` is the
/// listener bound at start when that source is enabled, `sockets` the sockets source's tier
/// chosen at start.
#[allow(clippy::too_many_arguments)]
pub fn spawn_all(
    config: &SourcesConfig,
    netflow: Option<netflow::NetflowListener>,
    sockets: Option<bpf::Choice>,
    records: &RecordsTx,
    metrics: &Arc<MeterMetrics>,
    progress: &Progress,
    stop: &tokio_util::sync::CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) {
    let (m, tx, stop) = (Arc::clone(metrics), records.clone(), stop.clone());
    if config.synthetic.enabled {
        let (cfg, tx, stop, m) = (config.synthetic.clone(), tx.clone(), stop.clone(), Arc::clone(&m));
        tasks.spawn(async move {
            let _task = m.task(task::SOURCE_SYNTHETIC);
            synthetic::run(cfg, tx, stop).await;
        });
    }
    if let Some(tier) = sockets {
        let (cfg, tx, stop, m, p) = (
            config.sockets.clone(),
            tx.clone(),
            stop.clone(),
            Arc::clone(&m),
            progress.clone(),
        );
        tasks.spawn(async move {
            let _task = m.task(task::SOURCE_SOCKETS);
            match tier {
                bpf::Choice::Bpf(programs) => {
                    SocketsTier {
                        tier: bpf::TIER,
                        reason: None,
                    }
                    .emit(&m);
                    let m2 = Arc::clone(&m);
                    let _ =
                        tokio::task::spawn_blocking(move || bpf::run(*programs, cfg, tx, m2, p, stop)).await;
                }
                bpf::Choice::SockDiag(reason) => {
                    SocketsTier {
                        tier: sockets::TIER,
                        reason: Some(&reason),
                    }
                    .emit(&m);
                    sockets::run(cfg, tx, Arc::clone(&m), p, stop).await;
                }
            }
        });
    }
    if config.interfaces.enabled {
        let (cfg, tx, stop, m, p) = (
            config.interfaces.clone(),
            tx.clone(),
            stop.clone(),
            Arc::clone(&m),
            progress.clone(),
        );
        tasks.spawn(async move {
            let _task = m.task(task::SOURCE_INTERFACES);
            interfaces::run(cfg, tx, Arc::clone(&m), p, stop).await;
        });
    }
    if let Some(listener) = netflow {
        let p = progress.clone();
        tasks.spawn(async move {
            let _task = m.task(task::SOURCE_NETFLOW);
            listener.run(tx, Arc::clone(&m), p, stop).await;
        });
    }
}

/// An address as records carry it: 4 bytes for IPv4 (IPv4-mapped IPv6 addresses included), 16
/// for IPv6.
pub fn addr_bytes(ip: std::net::IpAddr) -> bytes::Bytes {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => bytes::Bytes::copy_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => bytes::Bytes::copy_from_slice(&v6.octets()),
    }
}

/// Records travel to the batcher in chunks, so the channel is not crossed once per record.
pub type RecordChunk = Vec<pb::FlowRecord>;

/// Capacity of the source → batcher channel, in chunks. With chunks of up to
/// [`synthetic::MAX_CHUNK_RECORDS`] records this bounds the records in transit.
pub const RECORD_CHANNEL_CHUNKS: usize = 64;

/// The channel between sources and the batcher.
pub fn channel(metrics: Arc<MeterMetrics>) -> (RecordsTx, mpsc::Receiver<RecordChunk>) {
    let (tx, rx) = mpsc::channel(RECORD_CHANNEL_CHUNKS);
    let loss = Arc::new(loss::LossLedger::default());
    (RecordsTx { tx, metrics, loss }, rx)
}

#[derive(Clone)]
/// Cloned into every source's task; the batcher holds the receiver.
pub struct RecordsTx {
    /// The bounded source → batcher channel ([`RECORD_CHANNEL_CHUNKS`] chunks).
    tx: mpsc::Sender<RecordChunk>,
    /// Counts what the sources produced and what they dropped at a full channel.
    metrics: Arc<MeterMetrics>,
    /// What the sources failed to measure since the last batch; the batcher takes it into each
    /// batch it seals.
    loss: Arc<loss::LossLedger>,
}

#[derive(Debug, thiserror::Error)]
#[error("the batcher has stopped")]
pub struct PipelineClosed;

impl RecordsTx {
    /// Where sources count what they failed to measure.
    pub fn loss(&self) -> &Arc<loss::LossLedger> {
        &self.loss
    }

    /// Hands `chunk` on without waiting. If the channel is full the chunk is dropped and counted
    /// (`records_dropped{reason="source_queue_full"}`); returns false then.
    pub fn offer(&self, chunk: RecordChunk) -> Result<bool, PipelineClosed> {
        let n = chunk.len() as u64;
        match self.tx.try_send(chunk) {
            Ok(()) => {
                self.metrics.records.records_generated.inc_by(n);
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.records.records_generated.inc_by(n);
                RecordsDropped {
                    reason: DropReason::SourceQueueFull,
                    records: n,
                }
                .emit(&self.metrics);
                self.loss.add_records_dropped(n);
                Ok(false)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PipelineClosed),
        }
    }

    /// Hands `chunk` on, waiting for room.
    pub async fn send(&self, chunk: RecordChunk) -> Result<(), PipelineClosed> {
        let n = chunk.len() as u64;
        self.tx.send(chunk).await.map_err(|_| PipelineClosed)?;
        self.metrics.records.records_generated.inc_by(n);
        Ok(())
    }
}

/// Hands `records` on in chunks without waiting ([`RecordsTx::offer`]): what does not fit is
/// dropped and counted.
pub fn offer_all(out: &RecordsTx, records: Vec<pb::FlowRecord>) -> Result<(), PipelineClosed> {
    if records.len() <= synthetic::MAX_CHUNK_RECORDS {
        if !records.is_empty() {
            out.offer(records)?;
        }
        return Ok(());
    }
    for chunk in records.chunks(synthetic::MAX_CHUNK_RECORDS) {
        out.offer(chunk.to_vec())?;
    }
    Ok(())
}

/// A failure that repeats every interval is logged at most this often.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Holds back repeats of one warning (a source failing every interval).
#[derive(Default)]
pub(crate) struct HeldBackWarning {
    last: Option<tokio::time::Instant>,
}

impl HeldBackWarning {
    /// Whether the warning should be logged now.
    pub(crate) fn due(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// When a polling source reads its kernel table: every interval, a late read delaying the
/// next rather than bunching them.
pub(crate) struct ReadSchedule {
    tick: tokio::time::Interval,
}

impl ReadSchedule {
    pub(crate) fn every(interval_ms: u64) -> Self {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { tick }
    }

    /// Waits for the next read; false once `stop` fires.
    pub(crate) async fn next(&mut self, stop: &tokio_util::sync::CancellationToken) -> bool {
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = self.tick.tick() => true,
        }
    }
}
