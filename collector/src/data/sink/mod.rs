//! The seam between the data plane and wherever batches are stored.
//!
//! Data-plane tasks hand validated batches to a [`SinkHandle`]; the sink completes each job once it
//! holds the batch per its durability promise, and only then does the data plane ack. The queue in
//! between is bounded by count and by bytes: when it is full, `submit` waits, the data stream stops
//! reading, and QUIC flow control pushes back to the meter, which keeps its data. Nothing is ever
//! dropped here.
//!
//! A sink implements [`Sink`]: take jobs until the queue closes, retry transient failures itself
//! (reporting health meanwhile), complete a job with `Rejected` only for a batch it can never
//! store. Each sink is a folder here, listed once in [`registry`], which opens the configured one
//! as a [`ConfiguredSink`]. Must never: connect, reconnect or do blocking I/O on a task that also
//! reads from meters (invariant 3); a sink runs on its own task or thread.

pub mod entry;
pub mod file;
pub mod identity;
pub mod kafka;
pub mod nats;
pub mod pipeline;
pub mod registry;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{CollectorMetrics, DropReason};

/// A validated batch on its way to a sink: the `StoredBatch` encoded once, plus what sinks route
/// and de-duplicate by without decoding it again.
#[derive(Debug, Clone)]
pub struct SinkBatch {
    /// The authenticated org (never taken from the payload).
    pub org: Arc<str>,
    pub meter_id: Arc<str>,
    pub seq: u64,
    pub records: u32,
    /// Encoded `pb::StoredBatch`.
    pub payload: Bytes,
    /// Whether the payload holds its records as columns (`StoredBatch.columns`).
    pub columns: bool,
}

/// How a sink settled a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkOutcome {
    /// The sink holds the batch: ack it.
    Stored,
    /// The sink can never store this batch (not an outage): nack it.
    Rejected(String),
}

/// One batch in the sink queue. Its queue slot (count and bytes) is released when the job is
/// dropped, completed or not.
pub struct SinkJob {
    pub batch: SinkBatch,
    /// Taken when the job is completed; a job dropped with it still here was let go unsettled.
    done: Option<oneshot::Sender<SinkOutcome>>,
    slot: QueueSlot,
}

impl SinkJob {
    pub fn complete(mut self, outcome: SinkOutcome) {
        self.slot
            .metrics
            .queue
            .sink_seconds
            .observe(self.slot.queued_at.elapsed().as_secs_f64());
        if let Some(done) = self.done.take() {
            // The data stream may be gone (meter disconnected); it will resend what it did not
            // see acked.
            let _ = done.send(outcome);
        }
    }
}

impl Drop for SinkJob {
    fn drop(&mut self) {
        if self.done.is_some() {
            // Shutdown abandoned it: not acked, so its meter sends it again elsewhere.
            self.slot.metrics.output.dropped(DropReason::SinkStopped, 1);
        }
    }
}

struct QueueSlot {
    _bytes: OwnedSemaphorePermit,
    /// Counted in [`BufferedBytes`] from `submit` until the slot is released.
    _buffered: BufferedHold,
    bytes: i64,
    queued_at: Instant,
    metrics: Arc<CollectorMetrics>,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.metrics.queue.sink_queue_batches.dec();
        self.metrics.queue.sink_queue_bytes.dec_by(self.bytes);
    }
}

/// Bytes the data plane holds for the sink: batches waiting for room in the queue plus batches
/// in it. A plain counter, kept by [`SinkHandle::submit`] and the queue slots; the control plane's
/// admission reads it (its memory budget) and the `buffered_bytes` gauge mirrors it. Cheap to
/// clone; clones share the count.
#[derive(Clone, Debug, Default)]
pub struct BufferedBytes(Arc<AtomicU64>);

impl BufferedBytes {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn hold(&self, bytes: usize) -> BufferedHold {
        let bytes = bytes as u64;
        self.0.fetch_add(bytes, Ordering::Relaxed);
        BufferedHold {
            counter: self.clone(),
            bytes,
        }
    }
}

/// Bytes counted in a [`BufferedBytes`] until dropped.
struct BufferedHold {
    counter: BufferedBytes,
    bytes: u64,
}

impl Drop for BufferedHold {
    fn drop(&mut self) {
        self.counter.0.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Counts a batch's bytes in `frames_waiting_bytes` (part of what admission sees as buffered)
/// until it has room in the sink queue's byte budget (from then on it counts in
/// `sink_queue_bytes`).
struct WaitingFrame<'a> {
    metrics: &'a CollectorMetrics,
    bytes: i64,
}

impl<'a> WaitingFrame<'a> {
    fn new(metrics: &'a CollectorMetrics, bytes: usize) -> Self {
        let bytes = bytes as i64;
        metrics.queue.frames_waiting_bytes.inc_by(bytes);
        Self { metrics, bytes }
    }
}

impl Drop for WaitingFrame<'_> {
    fn drop(&mut self) {
        self.metrics.queue.frames_waiting_bytes.dec_by(self.bytes);
    }
}

/// Resolves when the sink has settled the batch; an error means the sink stopped without
/// settling it (shutdown): the batch must not be acked.
pub type SinkReceipt = oneshot::Receiver<SinkOutcome>;

#[derive(Debug, thiserror::Error)]
#[error("the sink has stopped")]
pub struct SinkClosed;

/// The data plane's front door to the sink. Cheap to clone.
#[derive(Clone)]
pub struct SinkHandle {
    jobs_tx: mpsc::Sender<SinkJob>,
    queue_bytes: Arc<Semaphore>,
    max_queue_bytes: usize,
    /// What this queue buffers, waiting or queued (read by admission).
    buffered: BufferedBytes,
    metrics: Arc<CollectorMetrics>,
}

impl SinkHandle {
    /// The count of bytes this queue buffers (waiting for room, or queued), for admission.
    pub fn buffered(&self) -> BufferedBytes {
        self.buffered.clone()
    }

    /// Queues `batch`, waiting while the queue is full. Returns the receipt to await before acking.
    pub async fn submit(&self, batch: SinkBatch) -> Result<SinkReceipt, SinkClosed> {
        // A batch larger than the whole byte budget takes the whole budget rather than waiting forever.
        let bytes = batch.payload.len().min(self.max_queue_bytes);
        let buffered = self.buffered.hold(bytes);
        let waiting = WaitingFrame::new(&self.metrics, bytes);
        let permit = Arc::clone(&self.queue_bytes)
            .acquire_many_owned(u32::try_from(bytes).unwrap_or(u32::MAX))
            .await
            .map_err(|_| SinkClosed)?;
        drop(waiting);
        self.metrics.queue.sink_queue_batches.inc();
        self.metrics.queue.sink_queue_bytes.inc_by(bytes as i64);
        let slot = QueueSlot {
            _bytes: permit,
            _buffered: buffered,
            bytes: bytes as i64,
            queued_at: Instant::now(),
            metrics: Arc::clone(&self.metrics),
        };
        let (done, receipt) = oneshot::channel();
        self.jobs_tx
            .send(SinkJob {
                batch,
                done: Some(done),
                slot,
            })
            .await
            .map_err(|_| SinkClosed)?;
        Ok(receipt)
    }
}

/// Whether the sink can currently store data; read by `/readyz` and by the control plane.
/// Counts outages (healthy → unavailable) and their length.
#[derive(Clone)]
pub struct SinkHealth {
    healthy: Arc<AtomicBool>,
    /// The same flag for those who wait for it to change ([`became_healthy`](Self::became_healthy));
    /// written after `healthy`.
    changes: Arc<tokio::sync::watch::Sender<bool>>,
    /// When the current outage began (None while healthy, or before the sink first came up).
    outage_since: Arc<Mutex<Option<Instant>>>,
    metrics: Arc<CollectorMetrics>,
}

impl SinkHealth {
    /// A sink that starts healthy (a local one, ready once opened).
    pub fn new(metrics: Arc<CollectorMetrics>) -> Self {
        Self::starting(metrics, true)
    }

    /// A sink whose health at start is `healthy`; a remote sink starts unavailable until it has
    /// connected (not counted as an outage).
    pub fn starting(metrics: Arc<CollectorMetrics>, healthy: bool) -> Self {
        metrics.sink.sink_healthy.set(i64::from(healthy));
        Self {
            healthy: Arc::new(AtomicBool::new(healthy)),
            changes: Arc::new(tokio::sync::watch::Sender::new(healthy)),
            outage_since: Arc::new(Mutex::new(None)),
            metrics,
        }
    }

    pub fn set(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        self.metrics.sink.sink_healthy.set(i64::from(healthy));
        if was == healthy {
            return;
        }
        // The flag as it is now, read under the watch's lock: whichever of two racing calls
        // comes last leaves both saying the same.
        self.changes.send_if_modified(|seen| {
            let now = self.healthy.load(Ordering::Relaxed);
            std::mem::replace(seen, now) != now
        });
        let mut since = self.outage_since.lock().unwrap_or_else(|e| e.into_inner());
        if healthy {
            if let Some(start) = since.take() {
                self.metrics
                    .sink
                    .sink_outage_seconds
                    .inc_by(start.elapsed().as_secs_f64());
            }
        } else {
            self.metrics.sink.sink_outages.inc();
            *since = Some(Instant::now());
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Returns once the sink is healthy (at once if it is now).
    pub async fn became_healthy(&self) {
        let mut changes = self.changes.subscribe();
        // The sender lives in `self`, so this only ends by seeing the sink healthy.
        let _ = changes.wait_for(|healthy| *healthy).await;
    }
}

/// What a running sink is given besides its jobs.
#[derive(Clone)]
pub struct SinkContext {
    pub metrics: Arc<CollectorMetrics>,
    pub health: SinkHealth,
    /// Fired when the shutdown grace period is over: stop retrying, drop what is left (unacked,
    /// so meters send it again elsewhere).
    pub abandon: CancellationToken,
}

/// A place batches are stored.
pub trait Sink: Send + 'static {
    /// Short name for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Whether the sink can store data the moment it starts (a remote sink must connect first).
    fn ready_at_start(&self) -> bool {
        true
    }

    /// Takes jobs until the queue is closed and empty (or `ctx.abandon` fires), completing each
    /// job only once the batch is held per this sink's durability promise.
    fn run(self, jobs: mpsc::Receiver<SinkJob>, ctx: SinkContext) -> impl Future<Output = ()> + Send;
}

/// A sink's run, started once with its queue and context.
type RunSink =
    Box<dyn FnOnce(mpsc::Receiver<SinkJob>, SinkContext) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The sink the configuration asks for, opened: any [`Sink`], whichever the registry opened.
pub struct ConfiguredSink {
    kind: &'static str,
    starts_healthy: bool,
    run: RunSink,
}

impl ConfiguredSink {
    pub fn new<S: Sink>(sink: S) -> Self {
        Self {
            kind: sink.kind(),
            starts_healthy: sink.ready_at_start(),
            run: Box::new(move |jobs, ctx| Box::pin(sink.run(jobs, ctx))),
        }
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Whether the sink can store data the moment it starts (a remote sink must connect first).
    pub fn starts_healthy(&self) -> bool {
        self.starts_healthy
    }

    pub async fn run(self, jobs: mpsc::Receiver<SinkJob>, ctx: SinkContext) {
        (self.run)(jobs, ctx).await
    }
}

/// Bounds of the queue in front of a sink.
#[derive(Debug, Clone, Copy)]
pub struct QueueBounds {
    pub batches: usize,
    pub bytes: usize,
}

/// The queue in front of a sink: the handle for the data plane, the receiving end for the sink.
pub fn queue(bounds: QueueBounds, metrics: Arc<CollectorMetrics>) -> (SinkHandle, mpsc::Receiver<SinkJob>) {
    let (jobs_tx, jobs_rx) = mpsc::channel(bounds.batches);
    let bytes = bounds.bytes.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
    metrics.queue.sink_queue_max_batches.set(bounds.batches as i64);
    metrics.queue.sink_queue_max_bytes.set(bytes as i64);
    let handle = SinkHandle {
        jobs_tx,
        queue_bytes: Arc::new(Semaphore::new(bytes)),
        max_queue_bytes: bytes,
        buffered: BufferedBytes::default(),
        metrics,
    };
    (handle, jobs_rx)
}
