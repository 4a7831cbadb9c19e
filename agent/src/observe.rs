//! What the outside can watch of a running meter besides its metrics: a progress signal, the
//! collector of the current session, and each acked batch.
//!
//! Owns: [`Progress`] (woken after acks, nacks, rejects, session changes, every change of the
//! spool's status, source reads and the first fleet lookup, so a caller waits for progress
//! instead of polling), [`CurrentCollector`] (written by the connect loop only), the [`AckObserver`]
//! type an embedding hands in, and [`MeterWatch`], which bundles them with the metrics for
//! tests and `herd`. Must never: decide anything in the meter (nothing here is read back by
//! the pipeline), or block the task that reports (a report is a watch send or a short lock).

use std::ops::Deref;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::telemetry::MeterMetrics;

/// A batch a collector acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckedBatch {
    pub seq: u64,
    pub records: u32,
    /// From writing the batch (its last send) to the ack.
    pub latency: std::time::Duration,
}

/// Told of each acked batch (see [`crate::Embedding::ack_observer`]); runs on the session's
/// task, so it must be quick.
pub type AckObserver = Arc<dyn Fn(AckedBatch) + Send + Sync>;

/// The meter made progress. Cloned into every task that makes some; cheap to clone.
#[derive(Clone)]
pub struct Progress(Arc<watch::Sender<()>>);

impl Progress {
    pub fn new() -> Self {
        Progress(Arc::new(watch::Sender::new(())))
    }

    /// Wakes everyone waiting on [`subscribe`](Self::subscribe).
    pub fn notify(&self) {
        self.0.send_replace(());
    }

    /// A receiver that is marked changed whenever progress is made.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.0.subscribe()
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// The collector of the current session, for tools and tests (not exported as a metric: the
/// metric is `collector_info`). Written by the connect loop, read by anyone.
#[derive(Default)]
pub struct CurrentCollector(Mutex<Option<Arc<str>>>);

impl CurrentCollector {
    /// Records the collector of the current session (`None`: not connected); returns the one
    /// before.
    pub fn replace(&self, collector: Option<Arc<str>>) -> Option<Arc<str>> {
        std::mem::replace(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()), collector)
    }

    /// The collector of the current session, if any.
    pub fn get(&self) -> Option<Arc<str>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a caller can watch of one running meter: its metrics (through `Deref`), its progress
/// signal and its current collector. Outlives the meter; cheap to clone.
#[derive(Clone)]
pub struct MeterWatch {
    /// Written by every task of the meter; read here.
    metrics: Arc<MeterMetrics>,
    /// Woken by the meter's tasks as they make progress; subscribed to here.
    progress: Progress,
    /// Written by the connect loop; read here.
    connection: Arc<CurrentCollector>,
}

impl MeterWatch {
    pub(crate) fn new(
        metrics: Arc<MeterMetrics>,
        progress: Progress,
        connection: Arc<CurrentCollector>,
    ) -> Self {
        MeterWatch {
            metrics,
            progress,
            connection,
        }
    }

    pub fn metrics(&self) -> &Arc<MeterMetrics> {
        &self.metrics
    }

    /// A receiver that is marked changed whenever the meter makes progress.
    pub fn changed(&self) -> watch::Receiver<()> {
        self.progress.subscribe()
    }

    /// The collector of the current session, if any.
    pub fn connected_to(&self) -> Option<Arc<str>> {
        self.connection.get()
    }
}

impl Deref for MeterWatch {
    type Target = MeterMetrics;

    fn deref(&self) -> &MeterMetrics {
        &self.metrics
    }
}
