//! The batch queue: encoded batches held in memory, in seq order, until a collector acks them.
//!
//! Owns: which batches are still owed to a collector. The batcher pushes; the session reads
//! batches after a cursor (so a new session resends everything unacked, in order, with the
//! original seqs), removes acked and nacked ones. Bounded by count and bytes; when full, the
//! oldest batch not already in flight to a collector is dropped and returned to the caller to
//! count (in-flight batches are about to be acked; only if every batch is in flight does the
//! oldest go). This is the seam the disk spool
//! (its own issue) extends. Must never: reorder batches, renumber them, or grow past its bounds.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// One encoded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedBatch {
    pub seq: u64,
    pub records: u32,
    /// The whole frame (length prefix and `DataUp`), ready to write.
    pub frame: Bytes,
}

#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_batches: usize,
    pub max_bytes: usize,
}

/// Batches and records settled by one ack.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub batches: u64,
    pub records: u64,
}

#[derive(Debug, Default)]
struct State {
    batches: VecDeque<QueuedBatch>,
    bytes: usize,
    /// No more pushes will come (the batcher has stopped).
    closed: bool,
    /// Highest seq the current session has sent (0: none yet). Batches up to it are in flight.
    sent_through: u64,
}

#[derive(Debug)]
pub struct BatchQueue {
    limits: QueueLimits,
    state: Mutex<State>,
    changed: Notify,
}

impl BatchQueue {
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queue half-updated (every update is a
        // single push/pop with its byte count), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a batch (its seq must be above every queued one). Returns the batches dropped to
    /// stay within the bounds.
    pub fn push(&self, batch: QueuedBatch) -> Vec<QueuedBatch> {
        let mut dropped = Vec::new();
        {
            let mut s = self.state();
            debug_assert!(s.batches.back().is_none_or(|b| b.seq < batch.seq));
            while !s.batches.is_empty()
                && (s.batches.len() >= self.limits.max_batches
                    || s.bytes + batch.frame.len() > self.limits.max_bytes)
            {
                let sent_through = s.sent_through;
                let oldest_unsent = s.batches.partition_point(|b| b.seq <= sent_through);
                let victim = if oldest_unsent < s.batches.len() {
                    oldest_unsent
                } else {
                    0
                };
                if let Some(old) = s.batches.remove(victim) {
                    s.bytes -= old.frame.len();
                    dropped.push(old);
                }
            }
            s.bytes += batch.frame.len();
            s.batches.push_back(batch);
        }
        self.changed.notify_waiters();
        dropped
    }

    /// The first batch with a seq above `after`, if any.
    pub fn next_after(&self, after: u64) -> Option<QueuedBatch> {
        let s = self.state();
        let i = s.batches.partition_point(|b| b.seq <= after);
        s.batches.get(i).cloned()
    }

    /// Waits for a batch with a seq above `after`. `None` once the queue is closed and has none.
    pub async fn wait_next_after(&self, after: u64) -> Option<QueuedBatch> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.state();
                let i = s.batches.partition_point(|b| b.seq <= after);
                if let Some(b) = s.batches.get(i) {
                    return Some(b.clone());
                }
                if s.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Records that the session has sent everything up to `seq`.
    pub fn mark_sent(&self, seq: u64) {
        let mut s = self.state();
        s.sent_through = s.sent_through.max(seq);
    }

    /// A new session starts: nothing is in flight any more (it resends from the oldest).
    pub fn reset_sent(&self) {
        self.state().sent_through = 0;
    }

    /// Removes every batch with seq <= `up_to`.
    pub fn ack(&self, up_to: u64) -> Settled {
        let mut settled = Settled::default();
        let mut s = self.state();
        while s.batches.front().is_some_and(|b| b.seq <= up_to) {
            if let Some(b) = s.batches.pop_front() {
                s.bytes -= b.frame.len();
                settled.batches += 1;
                settled.records += u64::from(b.records);
            }
        }
        settled
    }

    /// Removes the batch `seq` (nacked), returning it if it was still queued.
    pub fn remove(&self, seq: u64) -> Option<QueuedBatch> {
        let mut s = self.state();
        let i = s.batches.binary_search_by_key(&seq, |b| b.seq).ok()?;
        let b = s.batches.remove(i)?;
        s.bytes -= b.frame.len();
        Some(b)
    }

    /// No more batches will be pushed.
    pub fn close(&self) {
        self.state().closed = true;
        self.changed.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// (batches, bytes) held.
    pub fn depth(&self) -> (usize, usize) {
        let s = self.state();
        (s.batches.len(), s.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch(seq: u64, bytes: usize) -> QueuedBatch {
        QueuedBatch {
            seq,
            records: 2,
            frame: Bytes::from(vec![0u8; bytes]),
        }
    }

    #[test]
    fn cursor_reads_resend_everything_unacked_in_order() {
        let q = BatchQueue::new(QueueLimits {
            max_batches: 10,
            max_bytes: 1000,
        });
        for seq in 1..=5 {
            assert!(q.push(batch(seq, 10)).is_empty());
        }
        assert_eq!(
            q.ack(2),
            Settled {
                batches: 2,
                records: 4
            }
        );
        assert_eq!(q.remove(4).map(|b| b.seq), Some(4));
        // A new session starts from cursor 0 and sees 3, 5.
        assert_eq!(q.next_after(0).map(|b| b.seq), Some(3));
        assert_eq!(q.next_after(3).map(|b| b.seq), Some(5));
        assert_eq!(q.next_after(5), None);
        assert_eq!(q.depth(), (2, 20));
    }

    #[tokio::test]
    async fn waiting_reader_wakes_on_push_and_on_close() {
        let q = std::sync::Arc::new(BatchQueue::new(QueueLimits {
            max_batches: 10,
            max_bytes: 1000,
        }));
        let reader = {
            let q = q.clone();
            tokio::spawn(async move { (q.wait_next_after(0).await, q.wait_next_after(1).await) })
        };
        tokio::task::yield_now().await;
        q.push(batch(1, 1));
        q.close();
        let (first, second) = reader.await.unwrap();
        assert_eq!(first.map(|b| b.seq), Some(1));
        assert_eq!(second, None);
    }

    proptest! {
        /// Model test: the queue never exceeds its bounds, drops only from the front, and what it
        /// holds plus what it dropped plus what was acked is exactly what was pushed.
        #[test]
        fn bounds_hold_and_nothing_is_lost_silently(
            ops in proptest::collection::vec((0u8..3, 1usize..200), 1..200),
            max_batches in 1usize..20,
            max_bytes in 200usize..2000,
        ) {
            let q = BatchQueue::new(QueueLimits { max_batches, max_bytes });
            let (mut pushed, mut dropped, mut acked) = (0u64, 0u64, 0u64);
            let mut next_seq = 1u64;
            for (op, n) in ops {
                match op {
                    0 | 1 => {
                        dropped += q.push(batch(next_seq, n)).len() as u64;
                        pushed += 1;
                        next_seq += 1;
                    }
                    _ => acked += q.ack(next_seq.saturating_sub(n as u64 % 4)).batches,
                }
                let (len, bytes) = q.depth();
                prop_assert!(len <= max_batches);
                prop_assert!(bytes <= max_bytes || len == 1);
                prop_assert_eq!(len as u64 + dropped + acked, pushed);
            }
        }
    }

    #[test]
    fn when_full_batches_in_flight_are_kept_and_the_oldest_unsent_goes() {
        let q = BatchQueue::new(QueueLimits {
            max_batches: 4,
            max_bytes: 1000,
        });
        for seq in 1..=4 {
            q.push(batch(seq, 10));
        }
        q.mark_sent(2);
        let dropped: Vec<u64> = q.push(batch(5, 10)).iter().map(|b| b.seq).collect();
        assert_eq!(dropped, vec![3], "1 and 2 are in flight");
        q.mark_sent(5);
        let dropped: Vec<u64> = q.push(batch(6, 10)).iter().map(|b| b.seq).collect();
        assert_eq!(dropped, vec![1], "everything is in flight: the oldest goes");
        q.reset_sent();
        let dropped: Vec<u64> = q.push(batch(7, 10)).iter().map(|b| b.seq).collect();
        assert_eq!(dropped, vec![2]);
    }
}
