//! The default sink: per-org segment files on local disk ([`crate::data::sink::file::store`]).
//!
//! Runs on its own OS thread (file I/O blocks), with group commit: it takes every job waiting in
//! the queue, appends them all, syncs once per the fsync policy, then completes them together, so
//! one `fdatasync` covers everything that arrived while the previous one ran. On a write or sync
//! error (disk full, I/O error) it keeps the jobs, reports unhealthy, and retries every
//! [`RETRY_INTERVAL`]: nothing is acked that is not written. Must never: ack before the write its
//! policy promises, or run on a runtime thread that serves meters.

pub mod config;
pub mod consume;
pub mod store;

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use ringflow_ops::ConfigError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::entry::{Found, OpenError, Opened, ReadError, SinkEntry, SinkSite};
use super::{ConfiguredSink, Sink, SinkContext, SinkJob, SinkOutcome};
use crate::data::sink::file::store::{Evicted, RecoveryReport, SegmentStore, StoreError, StoreLimits};
use crate::telemetry::{BatchStored, CollectorMetrics, FileWriteFailed, LogThrottle, SegmentEvicted, Task};
pub use config::{FileSinkConfig, FsyncPolicy};

/// How long to wait before retrying a failed write.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Most jobs written under one sync.
const GROUP_MAX_JOBS: usize = 1024;

pub struct FileSink {
    store: SegmentStore,
    fsync: FsyncPolicy,
    fsync_interval: Duration,
}

impl FileSink {
    /// Opens the store in `data_dir` (taking its lock and recovering its tails).
    pub fn open(data_dir: &Path, config: &FileSinkConfig) -> Result<(Self, RecoveryReport), StoreError> {
        let (store, report) = SegmentStore::open(
            data_dir,
            StoreLimits {
                segment_bytes: config.segment_bytes,
                max_bytes: config.max_bytes,
            },
        )?;
        Ok((
            FileSink {
                store,
                fsync: config.fsync,
                fsync_interval: Duration::from_millis(config.fsync_interval_ms),
            },
            report,
        ))
    }

    fn run_on_thread(mut self, mut jobs: mpsc::Receiver<SinkJob>, ctx: SinkContext) {
        let _task = ctx.metrics.task(Task::FileSink);
        ctx.metrics.store.store_bytes.set(self.store.total_bytes() as i64);
        ctx.metrics
            .store
            .store_max_bytes
            .set(self.store.max_bytes() as i64);
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(error) => {
                tracing::error!(%error, "file sink cannot start its timer runtime; no batch will be stored");
                ctx.health.set(false);
                return;
            }
        };
        let throttle = LogThrottle::new(Duration::from_secs(10), 8);
        runtime.block_on(async {
            let mut tick = tokio::time::interval(self.fsync_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut group = Vec::with_capacity(GROUP_MAX_JOBS);
            loop {
                tokio::select! {
                    biased;
                    _ = ctx.abandon.cancelled() => break,
                    job = jobs.recv() => {
                        let Some(job) = job else { break };
                        group.push(job);
                        while group.len() < GROUP_MAX_JOBS {
                            match jobs.try_recv() {
                                Ok(job) => group.push(job),
                                Err(_) => break,
                            }
                        }
                        if !self.write_group(&mut group, &ctx, &throttle).await {
                            break;
                        }
                    }
                    _ = tick.tick(), if self.fsync == FsyncPolicy::Interval => {
                        if let Err(error) = self.store.sync() {
                            write_failed(&ctx.metrics, &throttle, &error);
                        }
                    }
                }
            }
            // Whatever was written is flushed on the way out, whatever the policy.
            if let Err(error) = self.store.sync() {
                tracing::error!(%error, "file sink: final sync failed");
            }
        });
    }

    /// Writes and settles every job in `group`, retrying until it succeeds. Returns false if the
    /// sink was told to abandon its work (the jobs are dropped unacked).
    async fn write_group(
        &mut self,
        group: &mut Vec<SinkJob>,
        ctx: &SinkContext,
        throttle: &LogThrottle,
    ) -> bool {
        let mut written = 0;
        loop {
            let result = self.try_write(&group[written..]);
            count_evicted(&self.store.take_evicted(), &ctx.metrics);
            match result {
                Ok(()) => break,
                Err((done, error)) => {
                    // A failed write: continue where it stopped (no duplicates). A failed sync or a
                    // vanished segment: what was written may not be on disk (the kernel may drop
                    // pages it could not write), so the whole group is written again; copies are
                    // harmless, downstream de-duplicates by (meter_id, seq).
                    written = if error.lost_durability() {
                        0
                    } else {
                        written + done
                    };
                    write_failed(&ctx.metrics, throttle, &error);
                    ctx.health.set(false);
                    tokio::select! {
                        _ = ctx.abandon.cancelled() => return false,
                        _ = tokio::time::sleep(RETRY_INTERVAL) => {}
                    }
                }
            }
        }
        if !ctx.health.is_healthy() {
            tracing::info!("file sink: writes succeed again");
            ctx.health.set(true);
        }
        ctx.metrics.store.store_bytes.set(self.store.total_bytes() as i64);
        for job in group.drain(..) {
            BatchStored {
                org: &job.batch.org,
                records: job.batch.records,
                bytes: job.batch.payload.len(),
            }
            .emit(&ctx.metrics);
            job.complete(SinkOutcome::Stored);
        }
        true
    }

    /// Appends `jobs`, checks their segments are still in place, and syncs per policy. On error
    /// returns how many jobs were appended before it.
    fn try_write(&mut self, jobs: &[SinkJob]) -> Result<(), (usize, StoreError)> {
        for (i, job) in jobs.iter().enumerate() {
            self.store
                .append(&job.batch.org, &job.batch.payload, job.batch.records)
                .map_err(|e| (i, e))?;
        }
        self.store.verify_active().map_err(|e| (jobs.len(), e))?;
        if self.fsync == FsyncPolicy::Always {
            self.store.sync().map_err(|e| (jobs.len(), e))?;
        }
        Ok(())
    }
}

fn count_evicted(evicted: &[Evicted], metrics: &CollectorMetrics) {
    for e in evicted {
        SegmentEvicted {
            org: &e.org,
            segment: e.segment,
            batches: e.meta.entries,
            records: e.meta.records,
            bytes: e.meta.bytes,
        }
        .emit(metrics);
    }
}

fn write_failed(metrics: &CollectorMetrics, log: &LogThrottle, error: &StoreError) {
    FileWriteFailed {
        error,
        disk_full: error.is_disk_full(),
        log,
    }
    .emit(metrics);
}

impl Sink for FileSink {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn run(self, jobs: mpsc::Receiver<SinkJob>, ctx: SinkContext) {
        let (finished_tx, finished_rx) = oneshot::channel::<()>();
        let health = ctx.health.clone();
        let spawned = std::thread::Builder::new()
            .name("ringflow-file-sink".into())
            .spawn(move || {
                self.run_on_thread(jobs, ctx);
                let _ = finished_tx.send(());
            });
        match spawned {
            // Resolves when the thread finishes (sent or dropped).
            Ok(_) => {
                let _ = finished_rx.await;
            }
            Err(error) => {
                health.set(false);
                tracing::error!(%error, "cannot start the file sink thread");
            }
        }
    }
}

/// The file sink's entry in the registry.
pub struct FileEntry;

impl SinkEntry for FileEntry {
    type Config = FileSinkConfig;

    fn validate(config: &FileSinkConfig) -> Result<(), ConfigError> {
        config.validate()
    }

    async fn open(config: &FileSinkConfig, site: &SinkSite) -> Result<Opened, OpenError> {
        let (sink, recovery) = FileSink::open(&site.data_dir, config).map_err(|e| OpenError::Sink {
            what: "cannot open the store in data_dir",
            config_fault: e.is_unusable_directory(),
            error: Box::new(e),
        })?;
        Ok((ConfiguredSink::new(sink), recovery, site.max_frame_bytes))
    }

    fn read_back(
        _: &FileSinkConfig,
        site: &SinkSite,
        org: Option<&str>,
        follow: bool,
        found: &mut dyn FnMut(Found<'_>) -> ControlFlow<()>,
    ) -> Result<(), ReadError> {
        consume::read_store(&site.data_dir, org, follow, &CancellationToken::new(), found)
            .map_err(ReadError::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::sink::{QueueBounds, SinkBatch, SinkHealth, queue};
    use bytes::Bytes;
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn acks_only_what_is_written_and_drains_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(CollectorMetrics::new());
        let (sink, _) = FileSink::open(dir.path(), &FileSinkConfig::default()).unwrap();
        let (handle, jobs) = queue(
            QueueBounds {
                batches: 4,
                bytes: 1 << 20,
            },
            Arc::clone(&metrics),
        );
        let ctx = SinkContext {
            metrics: Arc::clone(&metrics),
            health: SinkHealth::new(Arc::clone(&metrics)),
            abandon: CancellationToken::new(),
        };
        let task = tokio::spawn(sink.run(jobs, ctx));
        let mut receipts = Vec::new();
        for seq in 1..=20u64 {
            let batch = SinkBatch {
                org: "acme".into(),
                meter_id: "m".into(),
                seq,
                records: 2,
                payload: Bytes::from(vec![seq as u8; 50]),
                columns: false,
            };
            receipts.push(handle.submit(batch).await.unwrap());
        }
        drop(handle);
        for r in receipts {
            assert_eq!(r.await.unwrap(), SinkOutcome::Stored);
        }
        task.await.unwrap();
        assert_eq!(metrics.output.batches_stored.get(), 20);
        assert_eq!(metrics.output.records_stored.get(), 40);
        assert_eq!(metrics.queue.sink_queue_batches.get(), 0);
        assert_eq!(metrics.queue.sink_queue_bytes.get(), 0);
    }
}
