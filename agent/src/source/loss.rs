//! What the meter knows it failed to measure: counts that sources add as they lose something
//! (a close notification the kernel could not deliver, a connection the flow table had no room
//! for, records dropped at a full pipeline), taken by the batcher into each batch it seals
//! (`FlowBatch.loss`), so the collector can sum them per org.
//!
//! Owns: the counters since the last batch. Must never: block (atomics only), or lose a
//! count between `add` and `take` (each `take` swaps a counter to zero).

use std::sync::atomic::{AtomicU64, Ordering};

use ringflow_proto::pb;

/// Loss since the last batch sealed. Shared (in an `Arc`) by every source and the batcher.
#[derive(Debug, Default)]
pub struct LossLedger {
    /// Added by the sockets source when the kernel reports its close notifications overflowed.
    close_events_lost: AtomicU64,
    /// Added by polling sources when their table was full.
    flows_untracked: AtomicU64,
    /// Added by [`super::RecordsTx::offer`] when the source → batcher channel was full.
    records_dropped: AtomicU64,
    /// Added by the sockets source's bpf tier when its programs' flow map was full.
    packets_untracked: AtomicU64,
}

impl LossLedger {
    pub fn add_close_events_lost(&self, n: u64) {
        self.close_events_lost.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_flows_untracked(&self, n: u64) {
        self.flows_untracked.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_records_dropped(&self, n: u64) {
        self.records_dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_packets_untracked(&self, n: u64) {
        self.packets_untracked.fetch_add(n, Ordering::Relaxed);
    }

    /// Everything counted since the last `take`, or `None` when nothing was lost.
    pub fn take(&self) -> Option<pb::MeasurementLoss> {
        let loss = pb::MeasurementLoss {
            close_events_lost: self.close_events_lost.swap(0, Ordering::Relaxed),
            flows_untracked: self.flows_untracked.swap(0, Ordering::Relaxed),
            records_dropped: self.records_dropped.swap(0, Ordering::Relaxed),
            packets_untracked: self.packets_untracked.swap(0, Ordering::Relaxed),
        };
        (loss != pb::MeasurementLoss::default()).then_some(loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_take_returns_what_was_added_once() {
        let ledger = LossLedger::default();
        assert_eq!(ledger.take(), None);
        ledger.add_close_events_lost(3);
        ledger.add_flows_untracked(2);
        ledger.add_records_dropped(5);
        ledger.add_close_events_lost(1);
        ledger.add_packets_untracked(7);
        let loss = ledger.take().expect("something was lost");
        assert_eq!(
            (
                loss.close_events_lost,
                loss.flows_untracked,
                loss.records_dropped,
                loss.packets_untracked
            ),
            (4, 2, 5, 7)
        );
        assert_eq!(ledger.take(), None);
    }
}
