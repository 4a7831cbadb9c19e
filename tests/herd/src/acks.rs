//! Every ack the virtual meters receive: latency histograms (HdrHistogram) per sampling interval
//! and per phase of the run, and which batches each meter had acked, to check against the store.
//!
//! Owns: the phase clock of the latency comparison (before the herd, during it, after). Must
//! never: block a session for long (the observer takes one short lock per acked batch).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hdrhistogram::Histogram;
use ringflow_meter::{AckObserver, AckedBatch};

/// Where the run is, for the latency comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// The first wave is connecting: not compared.
    Warmup = 0,
    /// The first wave is connected and the herd has not started: the baseline.
    BeforeHerd = 1,
    /// From the herd's start until every meter is connected.
    DuringHerd = 2,
    /// The rest of the run.
    After = 3,
}

/// Latency percentiles, milliseconds (None: no acks).
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub count: u64,
}

/// What the acks added up to over the whole run.
#[derive(Debug, Clone, Copy, Default)]
pub struct AckSummary {
    /// Every ack of the run.
    pub all: Percentiles,
    /// Acks to first-wave meters before the herd.
    pub before_herd: Percentiles,
    /// Acks to first-wave meters while the herd connected.
    pub during_herd: Percentiles,
}

struct Book {
    interval: Histogram<u64>,
    all: Histogram<u64>,
    before_herd: Histogram<u64>,
    during_herd: Histogram<u64>,
    /// The batches acked to each meter, by meter index.
    acked: Vec<AckedRuns>,
}

/// The batches acked to one meter as runs of consecutive seqs with the same record count: a
/// meter acked in order at a steady rate is one run, however long the run (a soak acks millions
/// of batches; a pair per batch is 32 KB more every second at 2,000 meters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckedRuns {
    /// (first seq, last seq, records in each batch).
    runs: Vec<(u64, u64, u32)>,
}

impl AckedRuns {
    fn push(&mut self, seq: u64, records: u32) {
        match self.runs.last_mut() {
            Some((_, last, each)) if seq == *last + 1 && records == *each => *last = seq,
            _ => self.runs.push((seq, seq, records)),
        }
    }

    /// Each acked batch as (seq, records), in ack order (a batch acked twice appears twice).
    pub fn batches(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.runs
            .iter()
            .flat_map(|&(first, last, each)| (first..=last).map(move |seq| (seq, each)))
    }
}

/// Shared by the sampler and every meter's ack observer.
pub struct AckBook {
    phase: AtomicU8,
    book: Mutex<Book>,
}

/// Microseconds, 1 µs to 10 minutes, 3 significant digits.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |q: f64| Some(h.value_at_quantile(q) as f64 / 1000.0);
    Percentiles {
        p50: ms(0.50),
        p99: ms(0.99),
        count: h.len(),
    }
}

impl AckBook {
    pub fn new(meters: usize) -> anyhow::Result<Arc<AckBook>> {
        Ok(Arc::new(AckBook {
            phase: AtomicU8::new(Phase::Warmup as u8),
            book: Mutex::new(Book {
                interval: histogram()?,
                all: histogram()?,
                before_herd: histogram()?,
                during_herd: histogram()?,
                acked: vec![AckedRuns::default(); meters],
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Moves from `from` to `to` if the run is still in `from`; true if it did (the sampler and
    /// the plan's clock both move phases, and must not undo each other).
    pub fn advance(&self, from: Phase, to: Phase) -> bool {
        self.phase
            .compare_exchange(from as u8, to as u8, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Warmup,
            1 => Phase::BeforeHerd,
            2 => Phase::DuringHerd,
            _ => Phase::After,
        }
    }

    /// The observer for meter `index`; a first-wave meter's acks also count in the phase
    /// comparison.
    pub fn observer(self: &Arc<Self>, index: usize, first_wave: bool) -> AckObserver {
        let book = Arc::clone(self);
        Arc::new(move |batch: AckedBatch| book.record(index, first_wave, batch))
    }

    fn record(&self, index: usize, first_wave: bool, batch: AckedBatch) {
        let micros = (batch.latency.as_micros() as u64).clamp(1, 600_000_000);
        let phase = self.phase();
        let mut book = self.lock();
        let _ = book.interval.record(micros);
        let _ = book.all.record(micros);
        if first_wave {
            let _ = match phase {
                Phase::BeforeHerd => book.before_herd.record(micros),
                Phase::DuringHerd => book.during_herd.record(micros),
                _ => Ok(()),
            };
        }
        if let Some(acked) = book.acked.get_mut(index) {
            acked.push(batch.seq, batch.records);
        }
    }

    /// Percentiles of the acks since the last call.
    pub fn take_interval(&self) -> Percentiles {
        let mut book = self.lock();
        let p = percentiles(&book.interval);
        book.interval.reset();
        p
    }

    pub fn summary(&self) -> AckSummary {
        let book = self.lock();
        AckSummary {
            all: percentiles(&book.all),
            before_herd: percentiles(&book.before_herd),
            during_herd: percentiles(&book.during_herd),
        }
    }

    /// The batches acked to each meter, by meter index.
    pub fn acked_batches(&self) -> Vec<AckedRuns> {
        self.lock().acked.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ack(seq: u64, ms: u64) -> AckedBatch {
        AckedBatch {
            seq,
            records: 2,
            latency: Duration::from_millis(ms),
        }
    }

    #[test]
    fn phases_split_the_first_waves_acks_and_intervals_reset() {
        let book = AckBook::new(2).unwrap();
        let first = book.observer(0, true);
        let herd = book.observer(1, false);
        first(ack(1, 100)); // warm-up: counted overall only
        book.set_phase(Phase::BeforeHerd);
        first(ack(2, 2));
        herd(ack(1, 50));
        book.set_phase(Phase::DuringHerd);
        first(ack(3, 8));
        let s = book.summary();
        assert_eq!((s.all.count, s.before_herd.count, s.during_herd.count), (4, 1, 1));
        assert!((s.before_herd.p99.unwrap() - 2.0).abs() < 0.01);
        assert!((s.during_herd.p99.unwrap() - 8.0).abs() < 0.01);
        assert_eq!(book.take_interval().count, 4);
        assert_eq!(book.take_interval().count, 0, "an interval starts empty");
        let acked: Vec<Vec<(u64, u32)>> = book
            .acked_batches()
            .iter()
            .map(|runs| runs.batches().collect())
            .collect();
        assert_eq!(acked, vec![vec![(1, 2), (2, 2), (3, 2)], vec![(1, 2)]]);
    }

    #[test]
    fn acked_batches_are_held_as_runs_and_given_back_one_by_one() {
        let mut runs = AckedRuns::default();
        let acks = [(1, 3), (2, 3), (3, 3), (5, 3), (6, 1), (7, 1), (4, 3), (4, 3)];
        for (seq, records) in acks {
            runs.push(seq, records);
        }
        assert_eq!(runs.batches().collect::<Vec<_>>(), acks);
        // Gaps, a change of size, a late ack and a repeat each start a run; nothing else does.
        assert_eq!(runs.runs.len(), 5);
        let mut steady = AckedRuns::default();
        (1..=100_000).for_each(|seq| steady.push(seq, 1));
        assert_eq!(steady.runs.len(), 1, "a steady meter is one run");
        assert_eq!(steady.batches().count(), 100_000);
    }
}
