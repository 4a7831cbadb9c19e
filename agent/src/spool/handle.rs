//! The spool's handle: what the rest of the meter uses to hand batches to the spool, read them
//! back in order, and settle them. The task behind it is in [`super::task`].
//!
//! Owns: the messages to the spool task, [`SpoolStatus`] (what the task publishes after every
//! change), and [`SpoolReader`], the sender's cursor over pending batches. Must never: move a
//! reader past a batch it did not return (a cumulative ack would then settle a batch never sent).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{Counted, Entry, SpoolError};

/// A sealed batch on its way into the spool.
#[derive(Debug, Clone)]
pub struct SpoolBatch {
    pub seq: u64,
    pub records: u32,
    pub created_unix_ms: u64,
    /// The whole frame, as it goes on the wire.
    pub frame: Bytes,
}

impl SpoolBatch {
    /// Bytes it takes in a segment.
    pub fn size(&self) -> u64 {
        super::format::entry_bytes(self.frame.len())
    }
}

/// When an appended batch is on disk for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Synced before it can be read back to be sent.
    Always,
    /// Synced every interval: a power loss can lose the last interval, a crash of the meter
    /// nothing.
    Interval(Duration),
    /// The OS syncs when it likes.
    Never,
}

/// How the spool task runs.
#[derive(Debug, Clone, Copy)]
pub struct SpoolRun {
    pub fsync: FsyncPolicy,
    /// Capacity of the in-memory queue in front of the disk, in batches.
    pub memory_batches: usize,
}

impl From<&crate::config::SpoolConfig> for SpoolRun {
    fn from(config: &crate::config::SpoolConfig) -> Self {
        use crate::config::FsyncMode;
        SpoolRun {
            fsync: match config.fsync {
                FsyncMode::Always => FsyncPolicy::Always,
                FsyncMode::Interval => FsyncPolicy::Interval(Duration::from_millis(config.fsync_interval_ms)),
                FsyncMode::Never => FsyncPolicy::Never,
            },
            memory_batches: config.memory_batches,
        }
    }
}

/// What the spool task reports after every change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStatus {
    /// The highest seq that can be read back (written, and with `fsync = "always"` synced).
    pub appended_through: u64,
    pub pending_batches: u64,
    pub pending_records: u64,
    pub disk_bytes: u64,
    /// Creation time of the oldest pending batch (refreshed at most once a second).
    pub oldest_pending_unix_ms: Option<u64>,
    /// The batcher is done and everything it handed over is written.
    pub closed: bool,
}

impl SpoolStatus {
    /// Nothing more will be appended and nothing is left to deliver.
    pub fn settled(&self) -> bool {
        self.closed && self.pending_batches == 0
    }
}

/// What goes through the in-memory queue, applied in order.
pub(super) enum Input {
    Batch(SpoolBatch),
    /// Settle `seq` once everything queued before it is written (a batch split into new ones:
    /// the new ones must be on disk before the old one goes); `done` fires then.
    Replaced {
        seq: u64,
        records: u32,
        done: oneshot::Sender<()>,
    },
    /// The batcher is done; nothing follows.
    Close,
}

pub(super) enum Command {
    Read {
        after: u64,
        max: usize,
        reply: oneshot::Sender<Result<Vec<Entry>, SpoolError>>,
    },
    Ack {
        up_to: u64,
        reply: oneshot::Sender<Counted>,
    },
    Remove {
        seq: u64,
        records: u32,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("the spool has stopped")]
pub struct SpoolStopped;

/// Talks to the spool task. Cheap to clone; the task ends when every handle is gone.
#[derive(Clone)]
pub struct SpoolHandle {
    /// The bounded in-memory queue in front of the disk (`spool.memory_batches`): batches from
    /// the batcher and the session's re-seals, in order. Full: the sender waits. Read only by the
    /// spool task.
    pub(super) input: mpsc::Sender<Input>,
    /// Reads, acks and removals from the session, applied by the spool task ahead of the input
    /// queue (so acks free space even while writes fail).
    pub(super) commands: mpsc::Sender<Command>,
    /// What the spool task last published; read by the connect loop (settled?), the admin
    /// endpoint (oldest batch's age) and the pipeline at stop.
    pub(super) status: watch::Receiver<SpoolStatus>,
    /// Cancelled by the pipeline once the flush deadline has passed: a spool task stuck retrying
    /// a failing disk then counts what it holds as lost and ends.
    pub(super) give_up: CancellationToken,
}

impl SpoolHandle {
    /// Hands a batch to the spool, waiting while the in-memory queue is full.
    pub async fn append(&self, batch: SpoolBatch) -> Result<(), SpoolStopped> {
        self.input
            .send(Input::Batch(batch))
            .await
            .map_err(|_| SpoolStopped)
    }

    /// No batch follows: once the spool has written everything, its status says `closed`.
    pub async fn close(&self) {
        let _ = self.input.send(Input::Close).await;
    }

    /// Up to `max` pending batches with a seq above `after`, in order. `Ok(None)`: the spool
    /// task has stopped.
    async fn read_after(&self, after: u64, max: usize) -> Result<Option<Vec<Entry>>, SpoolError> {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Read { after, max, reply })
            .await
            .is_err()
        {
            return Ok(None);
        }
        match rx.await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Every batch with seq <= `up_to` is settled; returns what that settled (also counted in
    /// `batches_acked` and `records_acked` by the task, even if this call is given up).
    pub async fn ack(&self, up_to: u64) -> Counted {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(Command::Ack { up_to, reply }).await.is_err() {
            return Counted::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Settles `seq` out of order, now (a collector refused it for good).
    pub async fn remove(&self, seq: u64, records: u32) {
        let _ = self.commands.send(Command::Remove { seq, records }).await;
    }

    /// Settles `seq` once every batch appended before this call is written, and returns then:
    /// for a batch whose records were appended again as new batches. (A session must not send
    /// past `seq` before this returns: a cumulative ack would otherwise settle `seq` itself.)
    pub async fn replaced(&self, seq: u64, records: u32) {
        let (done, applied) = oneshot::channel();
        if self
            .input
            .send(Input::Replaced { seq, records, done })
            .await
            .is_ok()
        {
            let _ = applied.await;
        }
    }

    /// The meter is past its shutdown deadline: if writes are failing, stop retrying, count
    /// what could not be written as dropped, and end (so nothing waits on the spool any more).
    pub fn give_up(&self) {
        self.give_up.cancel();
    }

    pub fn status(&self) -> SpoolStatus {
        *self.status.borrow()
    }

    pub fn watch(&self) -> watch::Receiver<SpoolStatus> {
        self.status.clone()
    }

    /// A reader of pending batches in seq order, from the oldest.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader {
            handle: self.clone(),
            cursor: 0,
            buffer: VecDeque::new(),
        }
    }
}

/// Reads pending batches in order, a few at a time, waiting for new ones.
pub struct SpoolReader {
    handle: SpoolHandle,
    /// The seq of the last batch returned, or a seq below which nothing is pending.
    cursor: u64,
    buffer: VecDeque<Entry>,
}

/// Batches read back per request at most.
const READ_BATCHES: usize = 64;

impl SpoolReader {
    /// The next pending batch after the last one returned; `None` once the spool is closed (or
    /// stopped) and holds nothing more to send. An error (a failed read) skips nothing: the
    /// reader stays where it was.
    pub async fn next(&mut self) -> Result<Option<Entry>, SpoolError> {
        let mut status = self.handle.watch();
        loop {
            if let Some(entry) = self.buffer.pop_front() {
                self.cursor = entry.seq;
                return Ok(Some(entry));
            }
            let now = *status.borrow_and_update();
            if now.appended_through > self.cursor {
                let Some(more) = self.handle.read_after(self.cursor, READ_BATCHES).await? else {
                    return Ok(None);
                };
                if !more.is_empty() {
                    self.buffer.extend(more);
                    continue;
                }
                // The read was complete: everything above the cursor, up to what was readable
                // when this status was published, is settled already.
                self.cursor = now.appended_through;
            }
            if now.closed {
                return Ok(None);
            }
            if status.changed().await.is_err() {
                return Ok(None);
            }
        }
    }
}
