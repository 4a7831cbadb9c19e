//! Model test: random appends, acks, nacks, checkpoints, crashes and torn appends against a simple
//! in-memory model. After every step the spool must hold exactly the batches the model says are
//! pending (after a crash: plus, at most, those acked since the last save), in seq order, within
//! its caps, with counts and drop counters that match, across restarts.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::fs::MemFs;
use super::*;

const LIMITS: SpoolLimits = SpoolLimits {
    max_bytes: 4_096,
    max_entries: 64,
    segment_bytes: 1_024,
    // Small, so reads come both from memory and from disk.
    recent_bytes: 600,
};

#[derive(Debug, Clone)]
enum Op {
    Append {
        frame: usize,
        records: u32,
    },
    /// Ack up to the k-th pending batch (wrapping), or everything.
    Ack(usize),
    /// Nack the k-th pending batch.
    Remove(usize),
    /// Save the ack watermark (the spool task does this every second).
    Checkpoint,
    Crash,
    /// An append torn after `cut` bytes by a crash.
    TornAppend {
        frame: usize,
        cut: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..200, 1u32..50).prop_map(|(frame, records)| Op::Append { frame, records }),
        2 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Remove),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Crash),
        1 => (1usize..200, 0usize..240).prop_map(|(frame, cut)| Op::TornAppend { frame, cut }),
    ]
}

#[derive(Default)]
struct Model {
    pending: BTreeMap<u64, u32>,
    /// Frame length of every batch appended.
    lens: BTreeMap<u64, usize>,
    /// Acked since the state was last saved: pending again after a crash.
    acked_unsaved: BTreeMap<u64, u32>,
    next_seq: u64,
    accepted: u64,
    dropped: Counted,
}

fn check(spool: &mut Spool<MemFs>, fs: &MemFs, model: &Model) -> Result<(), TestCaseError> {
    let pending = spool.pending();
    prop_assert_eq!(pending.batches, model.pending.len() as u64);
    prop_assert_eq!(
        pending.records,
        model.pending.values().map(|&r| u64::from(r)).sum::<u64>()
    );
    let entries = spool.read_after(0, u64::MAX, usize::MAX, usize::MAX)?;
    let read: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    let want: Vec<u64> = model.pending.keys().copied().collect();
    prop_assert_eq!(read, want, "pending batches, in order");
    for e in &entries {
        prop_assert_eq!(
            &e.frame,
            &frame(frame_len(model, e.seq), e.seq),
            "content of {}",
            e.seq
        );
        prop_assert_eq!(Some(&e.records), model.pending.get(&e.seq));
    }
    let (bytes, entries) = spool.disk();
    prop_assert_eq!(bytes, fs.bytes_of(".seg"), "byte accounting matches the files");
    prop_assert!(bytes <= LIMITS.max_bytes, "{} bytes over the cap", bytes);
    prop_assert!(entries <= LIMITS.max_entries);
    prop_assert_eq!(spool.accepted_records(), model.accepted);
    prop_assert_eq!(spool.dropped(), model.dropped);
    Ok(())
}

/// After a crash, batches acked since the last save may be pending again (sent twice, never
/// lost); which of them depends on whether the spool saved its state on its own (to make room).
/// Anything else (a pending batch gone, an older acked one back) fails the `check` that follows.
fn restore_acked_unsaved(spool: &mut Spool<MemFs>, model: &mut Model) -> Result<(), TestCaseError> {
    let back: std::collections::BTreeSet<u64> = spool
        .read_after(0, u64::MAX, usize::MAX, usize::MAX)?
        .iter()
        .map(|e| e.seq)
        .collect();
    for (seq, records) in std::mem::take(&mut model.acked_unsaved) {
        if back.contains(&seq) {
            model.pending.insert(seq, records);
        }
    }
    Ok(())
}

/// The frame of batch `seq`: `len` bytes derived from `seq`, so a mix-up shows.
fn frame(len: usize, seq: u64) -> Bytes {
    (0..len).map(|i| (seq as usize * 7 + i) as u8).collect()
}

/// The frame length of batch `seq` (the model keeps lengths, not bytes).
fn frame_len(model: &Model, seq: u64) -> usize {
    model.lens.get(&seq).copied().unwrap_or(0)
}

proptest! {

    #[test]
    fn the_spool_matches_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        let fs = MemFs::default();
        let (mut spool, _) = Spool::open(fs.clone(), LIMITS)?;
        let mut model = Model { next_seq: 1, ..Default::default() };
        for op in ops {
            match op {
                Op::Append { frame: len, records } => {
                    let seq = model.next_seq;
                    model.next_seq += 1;
                    let dropped = spool.append(seq, records, seq * 10, frame(len, seq))?;
                    if !dropped.is_empty() {
                        // Dropping saves the state first.
                        model.acked_unsaved.clear();
                    }
                    for d in dropped {
                        let gone: Vec<u64> = model.pending.range(d.first_seq..=d.last_seq).map(|(s, _)| *s).collect();
                        let mut counted = Counted::default();
                        for s in &gone {
                            counted.batches += 1;
                            counted.records += u64::from(model.pending.remove(s).unwrap_or(0));
                        }
                        prop_assert_eq!(counted, d.pending, "drop count for {:?}", d);
                        // Only the oldest go.
                        prop_assert!(model.pending.keys().next().is_none_or(|&s| s > d.last_seq));
                        model.dropped.batches += counted.batches;
                        model.dropped.records += counted.records;
                    }
                    model.pending.insert(seq, records);
                    model.lens.insert(seq, len);
                    model.accepted += u64::from(records);
                }
                Op::Ack(k) => {
                    let up_to = if model.pending.is_empty() || k % 5 == 0 {
                        model.next_seq - 1
                    } else {
                        *model.pending.keys().nth(k % model.pending.len()).unwrap_or(&0)
                    };
                    let mut expect = Counted::default();
                    let acked: Vec<u64> = model.pending.range(..=up_to).map(|(s, _)| *s).collect();
                    for s in acked {
                        let records = model.pending.remove(&s).unwrap_or(0);
                        expect.batches += 1;
                        expect.records += u64::from(records);
                        model.acked_unsaved.insert(s, records);
                    }
                    let settled = spool.ack(up_to)?;
                    prop_assert_eq!(settled, expect);
                }
                Op::Remove(k) => {
                    if !model.pending.is_empty() {
                        let seq = *model.pending.keys().nth(k % model.pending.len()).unwrap_or(&0);
                        let records = model.pending.remove(&seq).unwrap_or(0);
                        prop_assert!(spool.remove(seq, records)?);
                        model.acked_unsaved.clear();
                    }
                }
                Op::Checkpoint => {
                    spool.checkpoint()?;
                    model.acked_unsaved.clear();
                }
                Op::Crash => {
                    drop(spool);
                    spool = Spool::open(fs.clone(), LIMITS)?.0;
                    restore_acked_unsaved(&mut spool, &mut model)?;
                }
                Op::TornAppend { frame: len, cut } => {
                    let seq = model.next_seq;
                    model.next_seq += 1;
                    fs.tear_next_append(cut);
                    prop_assert!(spool.append(seq, 1, 0, frame(len, seq)).is_err());
                    drop(spool);
                    fs.revive();
                    spool = Spool::open(fs.clone(), LIMITS)?.0;
                    restore_acked_unsaved(&mut spool, &mut model)?;
                    // Cut short, the batch was never accepted and must not come back. Written
                    // whole before the crash, it is in the spool and will be delivered.
                    let whole = cut >= format::ENTRY_HEADER_BYTES + len;
                    if whole && spool.last_seq() == seq {
                        model.pending.insert(seq, 1);
                        model.lens.insert(seq, len);
                        model.accepted += 1;
                    }
                    // Drops a crashed append made before tearing are on disk already; take them
                    // from the spool's persistent counters.
                    let dropped = spool.dropped();
                    if dropped != model.dropped {
                        let newly = Counted {
                            batches: dropped.batches - model.dropped.batches,
                            records: dropped.records - model.dropped.records,
                        };
                        let read: std::collections::BTreeSet<u64> =
                            spool.read_after(0, u64::MAX, usize::MAX, usize::MAX)?.iter().map(|e| e.seq).collect();
                        let gone: Vec<u64> = model.pending.keys().filter(|s| !read.contains(s)).copied().collect();
                        let mut counted = Counted::default();
                        for s in gone {
                            counted.batches += 1;
                            counted.records += u64::from(model.pending.remove(&s).unwrap_or(0));
                        }
                        prop_assert_eq!(counted, newly);
                        model.dropped = dropped;
                    }
                }
            }
            check(&mut spool, &fs, &model)?;
        }
    }
}

#[test]
fn recovery_reads_only_the_tail_and_the_head() {
    let fs = MemFs::default();
    let limits = SpoolLimits {
        max_bytes: 1 << 20,
        max_entries: 100_000,
        segment_bytes: 1_024,
        recent_bytes: 4_096,
    };
    let (mut spool, _) = Spool::open(fs.clone(), limits).unwrap();
    for seq in 1..=200 {
        spool.append(seq, 1, 0, Bytes::from_static(&[7u8; 100])).unwrap();
    }
    spool.ack(50).unwrap();
    spool.checkpoint().unwrap();
    drop(spool);
    let (spool, recovery) = Spool::open(fs, limits).unwrap();
    assert!(recovery.segments > 10, "{recovery:?}");
    assert_eq!(
        recovery.segments_read, 2,
        "the tail and the oldest segment, nothing else"
    );
    assert_eq!(spool.pending().batches, 150);
}

#[test]
fn the_accepted_count_and_the_drop_counters_survive_restarts() {
    let fs = MemFs::default();
    let (mut spool, _) = Spool::open(fs.clone(), LIMITS).unwrap();
    let mut dropped = 0;
    for seq in 1..=500u64 {
        dropped += spool
            .append(seq, 3, 0, Bytes::from_static(&[1u8; 100]))
            .unwrap()
            .iter()
            .map(|d| d.pending.batches)
            .sum::<u64>();
    }
    assert!(dropped > 0);
    drop(spool);
    let (spool, _) = Spool::open(fs, LIMITS).unwrap();
    assert_eq!(spool.accepted_records(), 1_500);
    assert_eq!(spool.dropped().batches, dropped);
    assert_eq!(spool.pending().batches + dropped, 500);
}
