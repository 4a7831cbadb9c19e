//! The spool task: the one owner of the [`Spool`].
//!
//! Owns: the bounded in-memory queue in front of the disk (`memory_batches` sealed batches on
//! their way to being written: when it is full the batcher waits, and host sources, which never
//! wait, drop and count), the fsync policy, the once-a-second checkpoint of the ack watermark,
//! and the spool's metrics and drop log (as telemetry events). Writes, syncs and checkpoints run
//! on the blocking pool; reads and acks run inline (the page cache, or the spool's memory of
//! recent batches). A failed write (a full disk) keeps its batch and is retried every second;
//! reads and acks go on meanwhile, and acks free space. A damaged segment is dropped (counted) rather than skipped.
//! Must never: lose a batch that was handed to it, except at the caps, on damage, or when told
//! to give up at shutdown (all counted).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fs::SpoolFs;
use super::handle::{Command, FsyncPolicy, Input, SpoolHandle, SpoolRun, SpoolStatus};
use super::{Counted, Spool, SpoolError};
use crate::observe::Progress;
use crate::telemetry::events::{BatchSpooled, BatchesSettled, Event, SpoolDropped, SpoolWritesAbandoned};
use crate::telemetry::{MeterMetrics, task};

/// Batches written in one trip to the blocking pool, at most.
const GROUP: usize = 256;

/// How long to wait before retrying a failed write.
const RETRY: Duration = Duration::from_secs(1);

/// How often the ack watermark is saved (at most this much acked data is sent again after a
/// crash).
const CHECKPOINT: Duration = Duration::from_secs(1);

/// Bytes read back per request at most.
const READ_BYTES: usize = 1 << 20;

/// Drops are logged at most this often.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A failing disk is logged at most this often.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Starts the task that owns `spool`. It runs until every handle is dropped (or, if writes are
/// failing, until [`SpoolHandle::give_up`]), then saves its state and syncs.
pub fn start<F: SpoolFs>(
    spool: Spool<F>,
    run: SpoolRun,
    metrics: Arc<MeterMetrics>,
    progress: Progress,
) -> (SpoolHandle, impl std::future::Future<Output = ()> + Send) {
    let (input_tx, input_rx) = mpsc::channel(run.memory_batches.max(1));
    let (commands_tx, commands_rx) = mpsc::channel(64);
    let (status_tx, status_rx) = watch::channel(SpoolStatus::default());
    let give_up = CancellationToken::new();
    // The spool's lifetime counters, as the metrics' starting point.
    metrics
        .spool
        .spool_accepted_records
        .inc_by(spool.accepted_records());
    let dropped = spool.dropped();
    metrics.spool.spool_dropped_batches.inc_by(dropped.batches);
    metrics.spool.spool_dropped_records.inc_by(dropped.records);
    let task = Task {
        spool: Some(spool),
        run,
        metrics,
        progress,
        status_tx,
        backlog: VecDeque::new(),
        close_requested: false,
        counted_drops: dropped,
        damage_dropped: Counted::default(),
        last_drop_log: None,
        failures: (0, None),
        oldest: None,
    };
    let handle = SpoolHandle {
        input: input_tx,
        commands: commands_tx,
        status: status_rx,
        give_up: give_up.clone(),
    };
    (handle, task.run(input_rx, commands_rx, give_up))
}

struct Task<F: SpoolFs> {
    /// `None` only while work runs on the blocking pool.
    spool: Option<Spool<F>>,
    run: SpoolRun,
    metrics: Arc<MeterMetrics>,
    /// Woken whenever the published status changes.
    progress: Progress,
    status_tx: watch::Sender<SpoolStatus>,
    /// Input taken from the queue and not yet applied (at most a group; the queue is read only
    /// when this is empty, so a failing disk pushes back on the batcher).
    backlog: VecDeque<Input>,
    /// The batcher said it is done.
    close_requested: bool,
    /// The spool's lifetime drop counters as last put in the metrics.
    counted_drops: Counted,
    /// Of the drops not yet put in the metrics, those of damaged segments (logged already).
    damage_dropped: Counted,
    last_drop_log: Option<Instant>,
    /// Failed write attempts in a row, and when that was last logged.
    failures: (u64, Option<Instant>),
    /// The oldest pending batch's creation time, and when that was looked up (it may be up to
    /// a second stale).
    oldest: Option<(Option<u64>, Instant)>,
}

impl<F: SpoolFs> Task<F> {
    async fn run(
        mut self,
        mut input: mpsc::Receiver<Input>,
        mut commands: mpsc::Receiver<Command>,
        give_up: CancellationToken,
    ) {
        let _task = self.metrics.task(task::SPOOL);
        self.publish();
        let (period, fsync_every) = match self.run.fsync {
            FsyncPolicy::Interval(d) => (d.min(CHECKPOINT), Some(d)),
            _ => (CHECKPOINT, None),
        };
        let mut last_fsync = Instant::now();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set while writes fail: when to try again.
        let mut retry_at: Option<Instant> = None;
        let (mut input_open, mut commands_open) = (true, true);
        while input_open || commands_open {
            tokio::select! {
                biased;
                command = commands.recv(), if commands_open => match command {
                    Some(c) => self.command(c),
                    None => commands_open = false,
                },
                _ = give_up.cancelled(), if retry_at.is_some() => break,
                _ = crate::sleep_until(retry_at), if retry_at.is_some() => {
                    let ok = self.write().await;
                    retry_at = (!ok).then(|| Instant::now() + RETRY);
                }
                next = input.recv(), if input_open && self.backlog.is_empty() && retry_at.is_none() => match next {
                    Some(Input::Close) => self.close_requested = true,
                    Some(first) => {
                        self.backlog.push_back(first);
                        while self.backlog.len() < GROUP && !self.close_requested {
                            match input.try_recv() {
                                Ok(Input::Close) => self.close_requested = true,
                                Ok(next) => self.backlog.push_back(next),
                                Err(_) => break,
                            }
                        }
                        if !self.write().await {
                            retry_at = Some(Instant::now() + RETRY);
                        }
                    }
                    None => input_open = false,
                },
                _ = tick.tick() => {
                    let fsync = fsync_every.is_some_and(|d| last_fsync.elapsed() >= d);
                    if fsync {
                        last_fsync = Instant::now();
                    }
                    self.checkpoint(fsync).await;
                }
            }
            self.account_drops();
            self.publish();
        }
        if retry_at.is_some() {
            self.abandon(&mut input);
        }
        self.checkpoint(true).await;
        self.account_drops();
        self.publish();
    }

    /// Applies the backlog in order on the blocking pool, and syncs per policy. False if a write
    /// (or, with `fsync = "always"`, the sync) failed: what was not written stays in the backlog.
    async fn write(&mut self) -> bool {
        let backlog = std::mem::take(&mut self.backlog);
        let metrics = Arc::clone(&self.metrics);
        let always = self.run.fsync == FsyncPolicy::Always;
        let outcome = self
            .blocking(move |spool| {
                let (left, mut failure) = write_backlog(spool, backlog, &metrics);
                if failure.is_none() && always {
                    failure = spool.sync().err();
                }
                Ok((left, failure))
            })
            .await;
        let Some((left, failure)) = outcome else {
            return false;
        };
        self.backlog = left;
        match failure {
            None => {
                if self.failures.0 > 0 {
                    tracing::info!(failed_attempts = self.failures.0, "spool writes work again");
                    self.failures = (0, None);
                }
                true
            }
            Some(error) => {
                // The first failure, then one line a minute with how many since.
                self.failures.0 += 1;
                let now = Instant::now();
                if self
                    .failures
                    .1
                    .is_none_or(|t| now.duration_since(t) >= FAILURE_LOG_INTERVAL)
                {
                    tracing::error!(
                        %error,
                        waiting_batches = self.backlog.len(),
                        failed_attempts = self.failures.0,
                        "spool write failed; keeping the batches in memory and retrying every second"
                    );
                    self.failures.1 = Some(now);
                }
                false
            }
        }
    }

    fn command(&mut self, command: Command) {
        let readable_through = self.readable_through();
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        match command {
            Command::Read { after, max, reply } => {
                let read = |spool: &mut Spool<F>| spool.read_after(after, readable_through, max, READ_BYTES);
                let result = retry_past_damage(spool, &mut self.damage_dropped, read);
                if let Err(error) = &result {
                    tracing::error!(%error, "spool read failed; the session will retry");
                }
                self.account_drops();
                self.publish();
                let _ = reply.send(result);
            }
            Command::Ack { up_to, reply } => {
                let settled = retry_past_damage(spool, &mut self.damage_dropped, |spool| spool.ack(up_to)).unwrap_or_else(|error| {
                    tracing::error!(%error, "spool: cannot apply an ack; those batches will be sent again");
                    Counted::default()
                });
                BatchesSettled { settled }.emit(&self.metrics);
                self.account_drops();
                self.publish();
                let _ = reply.send(settled);
            }
            Command::Remove { seq, records } => {
                if let Err(error) = spool.remove(seq, records) {
                    tracing::error!(%error, seq, "spool: cannot record a refused batch; it may be sent once more after a restart");
                }
            }
        }
    }

    /// The highest seq a reader may see: with `fsync = "always"`, only what is synced.
    fn readable_through(&self) -> u64 {
        let Some(spool) = self.spool.as_ref() else {
            return 0;
        };
        match self.run.fsync {
            FsyncPolicy::Always => spool.synced_through(),
            _ => spool.last_seq(),
        }
    }

    /// Saves where acks have got to (deleting what they passed), and syncs appends if `fsync`.
    async fn checkpoint(&mut self, fsync: bool) {
        self.blocking(move |spool| {
            spool.checkpoint()?;
            if fsync {
                spool.sync()?;
            }
            Ok(())
        })
        .await;
    }

    /// Runs `work` on the spool on the blocking pool (it may wait on the disk), or right here for
    /// a spool in memory; `None` (logged) if it failed.
    async fn blocking<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Spool<F>) -> Result<T, SpoolError> + Send + 'static,
    ) -> Option<T> {
        let mut spool = self.spool.take()?;
        let joined = if F::MAY_BLOCK {
            tokio::task::spawn_blocking(move || {
                let result = work(&mut spool);
                (spool, result)
            })
            .await
        } else {
            let result = work(&mut spool);
            Ok((spool, result))
        };
        match joined {
            Ok((spool, result)) => {
                self.spool = Some(spool);
                result
                    .inspect_err(|error| tracing::error!(%error, "spool: writing, saving or syncing failed"))
                    .ok()
            }
            Err(error) => {
                tracing::error!(%error, "spool: its blocking work panicked; the spool is gone");
                None
            }
        }
    }

    /// Shutdown while writes fail: what is still in memory is counted as dropped.
    fn abandon(&mut self, input: &mut mpsc::Receiver<Input>) {
        input.close();
        let mut lost = Counted::default();
        let mut count = |item: Input| {
            if let Input::Batch(b) = item {
                lost.batches += 1;
                lost.records += u64::from(b.records);
            }
        };
        self.backlog.drain(..).for_each(&mut count);
        while let Ok(item) = input.try_recv() {
            count(item);
        }
        SpoolWritesAbandoned { lost }.emit(&self.metrics);
    }

    /// Puts drops the spool made since the last call (at its caps, or of damaged segments) in
    /// the metrics and, at most every 10 s, in the log.
    fn account_drops(&mut self) {
        let Some(total) = self.spool.as_ref().map(|s| s.dropped()) else {
            return;
        };
        let new = Counted {
            batches: total.batches.saturating_sub(self.counted_drops.batches),
            records: total.records.saturating_sub(self.counted_drops.records),
        };
        if new == Counted::default() {
            return;
        }
        self.counted_drops = total;
        // Drops of damaged segments were logged as they happened.
        let full = Counted {
            batches: new.batches.saturating_sub(self.damage_dropped.batches),
            records: new.records.saturating_sub(self.damage_dropped.records),
        };
        self.damage_dropped = Counted::default();
        let log_full = (full != Counted::default() && self.drop_log_due()).then_some(full);
        SpoolDropped { new, log_full, total }.emit(&self.metrics);
    }

    /// Whether a line about drops at the caps may be logged now (at most every 10 s).
    fn drop_log_due(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_drop_log
            .is_some_and(|t| now.duration_since(t) < DROP_LOG_INTERVAL)
        {
            return false;
        }
        self.last_drop_log = Some(now);
        true
    }

    fn publish(&mut self) {
        let readable_through = self.readable_through();
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        let pending = spool.pending();
        let (disk_bytes, _) = spool.disk();
        let now = Instant::now();
        let oldest = match self.oldest {
            _ if pending.batches == 0 => None,
            // Looking it up reads the spool: at most once a second (it is a gauge of age).
            Some((Some(oldest), at)) if now.duration_since(at) < CHECKPOINT => Some(oldest),
            _ => {
                let oldest = spool.oldest_pending_unix_ms().unwrap_or(None);
                self.oldest = Some((oldest, now));
                oldest
            }
        };
        let status = SpoolStatus {
            appended_through: readable_through,
            pending_batches: pending.batches,
            pending_records: pending.records,
            disk_bytes,
            oldest_pending_unix_ms: oldest,
            closed: self.close_requested && self.backlog.is_empty(),
        };
        self.metrics.spool.spool_bytes.set(disk_bytes as i64);
        self.metrics.spool.spool_batches.set(pending.batches as i64);
        let changed = self.status_tx.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        if changed {
            self.progress.notify();
        }
    }
}

/// Appends the backlog in order, counting what was accepted; if a write fails, returns what is
/// left (that item first) and the error.
fn write_backlog<F: SpoolFs>(
    spool: &mut Spool<F>,
    mut backlog: VecDeque<Input>,
    metrics: &MeterMetrics,
) -> (VecDeque<Input>, Option<SpoolError>) {
    while let Some(next) = backlog.pop_front() {
        let result = match &next {
            Input::Batch(batch) => {
                let result = spool.append(
                    batch.seq,
                    batch.records,
                    batch.created_unix_ms,
                    batch.frame.clone(),
                );
                if result.is_ok() {
                    BatchSpooled {
                        records: batch.records,
                        bytes: batch.size(),
                    }
                    .emit(metrics);
                }
                result.map(drop)
            }
            Input::Replaced { seq, records, .. } => spool.remove(*seq, *records).map(drop),
            Input::Close => Ok(()),
        };
        if let Err(error) = result {
            backlog.push_front(next);
            return (backlog, Some(error));
        }
        if let Input::Replaced { done, .. } = next {
            let _ = done.send(());
        }
    }
    (backlog, None)
}

/// Runs `op`; if it meets a damaged segment, drops that segment (and any older ones; counted,
/// logged) and runs it again, as often as there are damaged segments.
fn retry_past_damage<F: SpoolFs, T>(
    spool: &mut Spool<F>,
    damage_dropped: &mut Counted,
    mut op: impl FnMut(&mut Spool<F>) -> Result<T, SpoolError>,
) -> Result<T, SpoolError> {
    loop {
        match op(spool) {
            Err(SpoolError::Corrupt { id, name, offset }) => {
                let before = spool.dropped();
                spool.drop_through(id)?;
                let after = spool.dropped();
                damage_dropped.batches += after.batches - before.batches;
                damage_dropped.records += after.records - before.records;
                tracing::error!(
                    segment = %name,
                    offset,
                    dropped_batches = after.batches - before.batches,
                    dropped_records = after.records - before.records,
                    "spool: a segment is damaged (checksum mismatch or cut short); dropped it and any older segments, counted in spool_dropped_*"
                );
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;
