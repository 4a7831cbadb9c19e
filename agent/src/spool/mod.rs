//! The meter's spool: every sealed batch goes to disk, and stays until a collector acks it.
//!
//! Owns: the spool directory (`STATE_DIR/spool`): segment files in seq order (format in
//! [`format`]), their sidecars, and `state.json` (the ack watermark, batches settled out of
//! order, and the drop counters, which survive restarts). Bounded by bytes and by entries: at a
//! cap the oldest segment is deleted whatever it holds, and what it held that was still pending
//! is counted as dropped. Recovery reads the sidecars, the tail segment (the only one an append
//! can tear) and the oldest segment (to find the first unacked entry); never the whole spool.
//! All I/O goes through [`fs::SpoolFs`], so the model test drives this code over memory.
//! [`handle`] runs it as a task the rest of the meter talks to. Must never: reorder or renumber
//! batches, or let a batch that was not acked, nacked or dropped (and counted) disappear.

pub mod format;
pub mod fs;
pub mod handle;
pub mod task;

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use format::Entry;
use format::{
    HEADER_BYTES, Scan, SegmentMeta, meta_name, parse_header, parse_segment_name, scan_entry, segment_name,
};
use fs::SpoolFs;

/// Bounds of the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Cap on the bytes of all segments.
    pub max_bytes: u64,
    /// Cap on the batches in all segments.
    pub max_entries: u64,
    /// A segment is closed at this size (or at an eighth of `max_entries` batches).
    pub segment_bytes: u64,
    /// Recently appended batches kept in memory as well, up to this many bytes: a sender that
    /// keeps up, and the acks that follow, then never read the disk.
    pub recent_bytes: u64,
}

impl SpoolLimits {
    fn entries_per_segment(&self) -> u64 {
        (self.max_entries / 8).max(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool: cannot {op} {name}: {source} (is state_dir writable, is the disk full?)")]
    Io {
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("spool: {name} is not a spool segment (bad header); move it out of the spool directory")]
    Foreign { name: String },
    /// An entry that fails its checksum or is cut short (the disk, or a hand, changed the file).
    #[error("spool: {name} is damaged at byte {offset} (checksum mismatch or cut short)")]
    Corrupt { id: u64, name: String, offset: u64 },
}

fn corrupt(id: u64, offset: u64) -> SpoolError {
    SpoolError::Corrupt {
        id,
        name: segment_name(id),
        offset,
    }
}

fn io_err<'a>(op: &'static str, name: &'a str) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        name: name.to_owned(),
        source,
    }
}

/// Batches and records settled (acked) or dropped by one operation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub batches: u64,
    pub records: u64,
}

/// A segment deleted at a cap: the seqs it covered, and what of it was still pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub first_seq: u64,
    pub last_seq: u64,
    pub pending: Counted,
}

/// What survives restarts besides the segments.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PersistentState {
    /// Every batch with seq <= this is settled.
    acked_through: u64,
    /// Batches above the watermark settled out of order (nacked, or split into new batches):
    /// seq → records.
    removed: BTreeMap<u64, u32>,
    dropped_batches: u64,
    dropped_records: u64,
    dropped_segments: u64,
    /// Segments with an id up to this were dropped (and counted) even if a crash left the file.
    dropped_through_id: u64,
}

const STATE_FILE: &str = "state.json";

/// What start-up found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub pending_batches: u64,
    /// Segment files whose contents were read.
    pub segments_read: usize,
    /// Bytes cut off a torn tail.
    pub truncated_bytes: u64,
}

struct Segment {
    meta: SegmentMeta,
    sealed: bool,
}

/// Where an entry starts: segment id and byte offset. Entries are appended in position order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    id: u64,
    offset: u64,
}

/// Where acks have got to (in the oldest segment).
type Head = Position;

/// Recently appended entries, by position (see [`SpoolLimits::recent_bytes`]). Entries leave
/// from the front: when over the byte limit, and as acks pass them.
struct Recent {
    entries: std::collections::VecDeque<(Position, Entry)>,
    bytes: u64,
    limit: u64,
}

impl Recent {
    fn new(limit: u64) -> Self {
        Recent {
            entries: Default::default(),
            bytes: 0,
            limit,
        }
    }

    fn push(&mut self, at: Position, entry: Entry) {
        self.bytes += entry.size();
        self.entries.push_back((at, entry));
        while self.bytes > self.limit {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, e)) = self.entries.pop_front() {
            self.bytes -= e.size();
        }
    }

    fn get(&self, at: Position) -> Option<&Entry> {
        let i = self.entries.binary_search_by(|(p, _)| p.cmp(&at)).ok()?;
        self.entries.get(i).map(|(_, e)| e)
    }

    /// Forgets every entry before `at`.
    fn forget_before(&mut self, at: Position) {
        while self.entries.front().is_some_and(|(p, _)| *p < at) {
            self.pop_front();
        }
    }
}

/// Bytes read from a segment, starting at `start`.
struct Chunk {
    id: u64,
    start: u64,
    data: Bytes,
}

pub struct Spool<F: SpoolFs> {
    fs: F,
    limits: SpoolLimits,
    segments: BTreeMap<u64, Segment>,
    state: PersistentState,
    head: Head,
    pending: Counted,
    disk_bytes: u64,
    disk_entries: u64,
    accepted_records: u64,
    next_id: u64,
    last_seq: u64,
    /// Continue reading from here if the next read starts after `after`.
    read_position: Option<(u64, Head)>,
    recent: Recent,
    /// The segment bytes read last: consecutive entries are parsed out of one read.
    chunk: Option<Chunk>,

    unsynced: bool,
    /// Every append up to this seq is synced.
    synced_seq: u64,
    /// Acks moved the watermark since the state was last saved.
    state_dirty: bool,
    scratch: Vec<u8>,
}

/// Bytes read at a time when scanning a segment.
const READ_CHUNK: usize = 256 << 10;

impl<F: SpoolFs> Spool<F> {
    /// Opens the spool on `fs`, recovering from whatever a crash left.
    pub fn open(fs: F, limits: SpoolLimits) -> Result<(Self, Recovery), SpoolError> {
        let mut spool = Spool {
            fs,
            limits,
            segments: BTreeMap::new(),
            state: PersistentState::default(),

            head: Head {
                id: 0,
                offset: HEADER_BYTES,
            },
            pending: Counted::default(),
            disk_bytes: 0,
            disk_entries: 0,
            accepted_records: 0,
            next_id: 1,
            last_seq: 0,
            read_position: None,
            recent: Recent::new(limits.recent_bytes),
            chunk: None,

            unsynced: false,
            synced_seq: 0,
            state_dirty: false,
            scratch: Vec::new(),
        };
        let recovery = spool.recover()?;
        Ok((spool, recovery))
    }

    fn recover(&mut self) -> Result<Recovery, SpoolError> {
        let mut recovery = Recovery::default();
        let names = self.fs.list().map_err(io_err("list", "the spool directory"))?;
        for name in names.iter().filter(|n| n.ends_with(".tmp")) {
            let _ = self.fs.remove(name);
        }
        if let Some(text) = self.fs.read(STATE_FILE).map_err(io_err("read", STATE_FILE))? {
            // A state file that does not parse is older than any valid one: start from nothing.
            self.state = serde_json::from_slice(&text).unwrap_or_default();
        }
        let mut ids: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        ids.sort_unstable();
        self.next_id = ids
            .last()
            .map_or(1, |id| id + 1)
            .max(self.state.dropped_through_id + 1);
        // Dropped (and counted) before a crash got to delete them.
        let dropped_through = self.state.dropped_through_id;
        for &id in ids.iter().filter(|&&id| id <= dropped_through) {
            self.delete_files(id)?;
        }
        ids.retain(|&id| id > dropped_through);
        for (i, &id) in ids.iter().enumerate() {
            let is_tail = i + 1 == ids.len();
            let sidecar = self.read_meta(id)?;
            let (meta, sealed) = match sidecar {
                Some(meta) => (meta, true),
                None => {
                    recovery.segments_read += 1;
                    let (meta, cut) = self.repair(id)?;
                    recovery.truncated_bytes += cut;
                    if !is_tail {
                        // Sealed without its sidecar (a crash in between): write it now.
                        self.write_meta(id, &meta)?;
                    }
                    (meta, !is_tail)
                }
            };
            self.segments.insert(id, Segment { meta, sealed });
        }

        // Fully acked sealed segments are done with.
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, s)| s.sealed && s.meta.last_seq <= self.state.acked_through)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.delete_segment(id)?;
        }
        if self.segments.values().last().is_none_or(|s| s.sealed) {
            let accepted = self
                .segments
                .values()
                .last()
                .map_or(0, |s| s.meta.accepted_before + s.meta.records);
            self.start_segment(accepted)?;
        }
        self.disk_bytes = 0;
        self.disk_entries = 0;
        for s in self.segments.values() {
            self.disk_bytes += s.meta.bytes;
            self.disk_entries += s.meta.entries;
            self.pending.batches += s.meta.entries;
            self.pending.records += s.meta.records;
            self.last_seq = self.last_seq.max(s.meta.last_seq);
        }
        if let Some(last) = self.segments.values().last() {
            self.accepted_records = last.meta.accepted_before + last.meta.records;
        }
        for &records in self.state.removed.values() {
            self.pending.batches = self.pending.batches.saturating_sub(1);
            self.pending.records = self.pending.records.saturating_sub(u64::from(records));
        }
        // Walk the oldest segment up to the watermark (counting those entries as settled).
        self.head = Head {
            id: self.segments.keys().next().copied().unwrap_or(0),
            offset: HEADER_BYTES,
        };
        if self.head.id != 0 {
            recovery.segments_read += 1;
        }
        let watermark = self.state.acked_through;
        self.advance_head(watermark)?;
        self.last_seq = self.last_seq.max(watermark);
        // What a crash left is all there is: count it as synced.
        self.synced_seq = self.last_seq;
        recovery.segments = self.segments.len();
        recovery.pending_batches = self.pending.batches;
        Ok(recovery)
    }

    /// Appends one batch. `seq` must be above every seq appended before. Returns the segments
    /// dropped at the caps to make room. Written to the OS, not yet synced (see [`sync`](Self::sync)).
    pub fn append(
        &mut self,
        seq: u64,
        records: u32,
        created_unix_ms: u64,
        frame: Bytes,
    ) -> Result<Vec<Dropped>, SpoolError> {
        debug_assert!(seq > self.last_seq, "seq {seq} after {}", self.last_seq);
        let size = format::entry_bytes(frame.len());
        let active_id = self.active_id();
        let rotate = self.segments.get(&active_id).is_some_and(|s| {
            s.meta.entries > 0
                && (s.meta.bytes + size > self.limits.segment_bytes
                    || s.meta.entries >= self.limits.entries_per_segment())
        });
        if rotate {
            self.seal(active_id)?;
            self.start_segment(self.accepted_records)?;
        }
        let dropped = self.make_room(size)?;
        let id = self.active_id();
        self.scratch.clear();
        format::encode_entry(seq, records, created_unix_ms, &frame, &mut self.scratch);
        let name = segment_name(id);
        if let Err(e) = self.fs.append(&name, &self.scratch) {
            // Cut off what part of the entry made it, so the segment stays whole entries.
            let good = self.segments.get(&id).map_or(HEADER_BYTES, |s| s.meta.bytes);
            let _ = self.fs.truncate(&name, good);
            return Err(io_err("append to", &name)(e));
        }
        let Some(seg) = self.segments.get_mut(&id) else {
            unreachable!("the active segment exists");
        };
        if seg.meta.entries == 0 {
            seg.meta.first_seq = seq;
            seg.meta.first_created_unix_ms = created_unix_ms;
        }
        let offset = seg.meta.bytes;
        seg.meta.bytes += size;
        seg.meta.entries += 1;
        seg.meta.records += u64::from(records);
        seg.meta.last_seq = seq;
        self.disk_bytes += size;
        self.disk_entries += 1;
        self.pending.batches += 1;
        self.pending.records += u64::from(records);
        self.accepted_records += u64::from(records);
        self.last_seq = seq;
        self.unsynced = true;
        let entry = Entry {
            seq,
            records,
            created_unix_ms,
            frame,
        };
        self.recent.push(Position { id, offset }, entry);
        Ok(dropped)
    }

    /// Makes every append so far durable.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.unsynced {
            let name = segment_name(self.active_id());
            self.fs.sync(&name).map_err(io_err("sync", &name))?;
            self.unsynced = false;
        }
        self.synced_seq = self.last_seq;
        Ok(())
    }

    /// Every append up to this seq is synced to disk.
    pub fn synced_through(&self) -> u64 {
        self.synced_seq
    }

    /// Up to `max_batches` pending batches (at most about `max_bytes`, at least one) with a seq
    /// above `after` and at most `through`, in seq order. Acked, removed and dropped batches are
    /// skipped; a damaged entry is an error ([`SpoolError::Corrupt`]), never skipped.
    pub fn read_after(
        &mut self,
        after: u64,
        through: u64,
        max_batches: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, SpoolError> {
        let from = after.max(self.state.acked_through);
        let mut pos = match self.read_position {
            Some((cached_after, head)) if cached_after == after && self.segments.contains_key(&head.id) => {
                head
            }
            _ => {
                // The first segment that holds anything above `from`.
                let Some((&id, _)) = self
                    .segments
                    .iter()
                    .find(|(_, s)| s.meta.entries > 0 && s.meta.last_seq > from)
                else {
                    return Ok(Vec::new());
                };
                // Acked entries before the head are not read again.
                match id == self.head.id {
                    true => self.head,
                    false => Head {
                        id,
                        offset: HEADER_BYTES,
                    },
                }
            }
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        'segments: while let Some(end) = self.segments.get(&pos.id).map(|s| s.meta.bytes) {
            while pos.offset < end {
                let Some((entry, size)) = self.entry_at(pos.id, pos.offset, end)? else {
                    return Err(corrupt(pos.id, pos.offset));
                };
                if entry.seq > through {
                    break 'segments;
                }
                pos.offset += size;
                if entry.seq > from && !self.state.removed.contains_key(&entry.seq) {
                    bytes += entry.frame.len();
                    out.push(entry);
                    if out.len() >= max_batches || bytes >= max_bytes {
                        break 'segments;
                    }
                }
            }
            match self.segments.range(pos.id + 1..).next() {
                Some((&next, _)) => {
                    pos = Head {
                        id: next,
                        offset: HEADER_BYTES,
                    }
                }
                None => break,
            }
        }
        let last = out.last().map_or(after, |e| e.seq);
        self.read_position = Some((last, pos));
        Ok(out)
    }

    /// Every batch with seq <= `up_to` is settled. Returns what this ack settled. Saved, and
    /// segments with nothing pending deleted, at the next [`checkpoint`](Self::checkpoint) (or
    /// any other change that saves the state).
    pub fn ack(&mut self, up_to: u64) -> Result<Counted, SpoolError> {
        if up_to <= self.state.acked_through {
            return Ok(Counted::default());
        }
        self.state.acked_through = up_to;
        let settled = self.advance_head(up_to)?;
        self.recent.forget_before(self.head);
        // Settled out of order and now below the watermark: nothing to remember.
        self.state.removed.retain(|&seq, _| seq > up_to);
        self.state_dirty = true;
        Ok(settled)
    }

    /// Settles batch `seq` out of order (nacked, or split into new batches): it is not sent
    /// again. Returns false if it was not pending.
    pub fn remove(&mut self, seq: u64, records: u32) -> Result<bool, SpoolError> {
        let oldest_on_disk = self
            .segments
            .values()
            .find(|s| s.meta.entries > 0)
            .map(|s| s.meta.first_seq);
        if seq <= self.state.acked_through
            || seq > self.last_seq
            || oldest_on_disk.is_none_or(|first| seq < first)
            || self.state.removed.contains_key(&seq)
        {
            // Settled already, or dropped at a cap (and counted then).
            return Ok(false);
        }
        self.state.removed.insert(seq, records);
        self.pending.batches = self.pending.batches.saturating_sub(1);
        self.pending.records = self.pending.records.saturating_sub(u64::from(records));
        self.save_state(false)?;
        Ok(true)
    }

    /// Pending batches and records (on disk, not settled).
    pub fn pending(&self) -> Counted {
        self.pending
    }

    /// Bytes and batches on disk (pending or not yet deleted).
    pub fn disk(&self) -> (u64, u64) {
        (self.disk_bytes, self.disk_entries)
    }

    /// Records the meter has accepted into the spool over its whole life.
    pub fn accepted_records(&self) -> u64 {
        self.accepted_records
    }

    /// Batches and records dropped at the caps over the meter's whole life.
    pub fn dropped(&self) -> Counted {
        Counted {
            batches: self.state.dropped_batches,
            records: self.state.dropped_records,
        }
    }

    pub fn acked_through(&self) -> u64 {
        self.state.acked_through
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Creation time of the oldest pending batch. Reads it back each time (the spool task
    /// looks at most once a second).
    pub fn oldest_pending_unix_ms(&mut self) -> Result<Option<u64>, SpoolError> {
        // Keep the sender's read position: this read is not the sender's.
        let sender_position = self.read_position.take();
        let first = self
            .read_after(self.state.acked_through, u64::MAX, 1, 1)?
            .first()
            .map(|e| e.created_unix_ms);
        self.read_position = sender_position;
        Ok(first)
    }

    /// Moves the head past every entry with seq <= `up_to`, counting what that settles, and
    /// deletes sealed segments left with nothing pending.
    fn advance_head(&mut self, up_to: u64) -> Result<Counted, SpoolError> {
        let mut settled = Counted::default();
        loop {
            let Some(seg) = self.segments.get(&self.head.id) else {
                return Ok(settled);
            };
            let (end, sealed) = (seg.meta.bytes, seg.sealed);
            while self.head.offset < end {
                let Some((entry, size)) = self.entry_at(self.head.id, self.head.offset, end)? else {
                    return Err(corrupt(self.head.id, self.head.offset));
                };
                if entry.seq > up_to {
                    return Ok(settled);
                }
                self.head.offset += size;
                if self.state.removed.remove(&entry.seq).is_none() {
                    settled.batches += 1;
                    settled.records += u64::from(entry.records);
                    self.pending.batches = self.pending.batches.saturating_sub(1);
                    self.pending.records = self.pending.records.saturating_sub(u64::from(entry.records));
                }
            }
            if !sealed {
                return Ok(settled);
            }
            // Passed whole: deleted at the next checkpoint, once the watermark is saved.
            match self.segments.range(self.head.id + 1..).next() {
                Some((&next, _)) => {
                    self.head = Head {
                        id: next,
                        offset: HEADER_BYTES,
                    }
                }
                None => return Ok(settled),
            }
        }
    }

    /// Saves the ack watermark if acks moved it, then deletes the segments acks have passed.
    /// Until then a crash only means those batches are sent again (the collector side
    /// de-duplicates by `(meter_id, seq)`): acks cost no disk writes of their own.
    pub fn checkpoint(&mut self) -> Result<(), SpoolError> {
        if self.state_dirty {
            self.save_state(false)?;
        }
        let passed: Vec<u64> = self.segments.range(..self.head.id).map(|(id, _)| *id).collect();
        for id in passed {
            self.delete_segment(id)?;
        }
        Ok(())
    }

    /// Drops the oldest segments until `size` more bytes and one more batch fit.
    fn make_room(&mut self, size: u64) -> Result<Vec<Dropped>, SpoolError> {
        let mut dropped = Vec::new();
        if self.disk_bytes + size > self.limits.max_bytes || self.disk_entries + 1 > self.limits.max_entries {
            // Acked segments go first, and are not drops.
            self.checkpoint()?;
        }
        while self.disk_bytes + size > self.limits.max_bytes
            || self.disk_entries + 1 > self.limits.max_entries
        {
            let Some((&id, seg)) = self.segments.iter().next() else {
                break;
            };
            if !seg.sealed {
                if seg.meta.entries == 0 {
                    break;
                }
                // Everything is in the active segment: close it and start another, then drop it.
                self.seal(id)?;
                self.start_segment(self.accepted_records)?;
                continue;
            }
            dropped.push(self.drop_oldest(id)?);
        }
        Ok(dropped)
    }

    fn drop_oldest(&mut self, id: u64) -> Result<Dropped, SpoolError> {
        let Some(meta) = self.segments.get(&id).map(|s| s.meta) else {
            unreachable!("dropping an existing segment");
        };
        // Pending in it: its entries past the head (if it is the head) that are neither acked
        // nor removed. A damaged remainder that cannot be read is counted from the segment's
        // totals, as pending unless the watermark is past the segment.
        let head_offset = if self.head.id == id {
            self.head.offset
        } else {
            HEADER_BYTES
        };
        let (mut pending, mut seen) = (Counted::default(), Counted::default());
        let mut offset = HEADER_BYTES;
        while offset < meta.bytes {
            let Some((entry, size)) = self.entry_at(id, offset, meta.bytes)? else {
                if meta.last_seq > self.state.acked_through {
                    pending.batches += meta.entries.saturating_sub(seen.batches);
                    pending.records += meta.records.saturating_sub(seen.records);
                }
                break;
            };
            seen.batches += 1;
            seen.records += u64::from(entry.records);
            if offset >= head_offset
                && entry.seq > self.state.acked_through
                && !self.state.removed.contains_key(&entry.seq)
            {
                pending.batches += 1;
                pending.records += u64::from(entry.records);
            }
            offset += size;
        }
        // Counted durably before the file goes: a crash in between cannot count it twice, and
        // if the count cannot be saved nothing has changed (the next attempt counts it once).
        let in_segment = |seq: &u64| (meta.first_seq..=meta.last_seq).contains(seq);
        let mut state = self.state.clone();
        state.dropped_batches += pending.batches;
        state.dropped_records += pending.records;
        state.dropped_segments += 1;
        state.dropped_through_id = id;
        state.removed.retain(|s, _| !in_segment(s));
        write_state(&mut self.fs, &state, true)?;
        self.state = state;
        self.state_dirty = false;
        self.pending.batches = self.pending.batches.saturating_sub(pending.batches);
        self.pending.records = self.pending.records.saturating_sub(pending.records);
        self.delete_segment(id)?;
        if self.head.id == id {
            self.head = Head {
                id: self.segments.keys().next().copied().unwrap_or(0),
                offset: HEADER_BYTES,
            };
        }
        Ok(Dropped {
            first_seq: meta.first_seq,
            last_seq: meta.last_seq,
            pending,
        })
    }

    /// Drops every segment up to and including `id`, counting what they held as a cap would:
    /// for a damaged segment (which cannot be read, so cannot be delivered or walked past).
    pub fn drop_through(&mut self, id: u64) -> Result<Vec<Dropped>, SpoolError> {
        if id == self.active_id() && self.segments.get(&id).is_some_and(|s| s.meta.entries > 0) {
            self.seal(id)?;
            self.start_segment(self.accepted_records)?;
        }
        // Acked segments go without being counted.
        self.checkpoint()?;
        let mut dropped = Vec::new();
        while let Some(&oldest) = self.segments.keys().next()
            && oldest <= id
            && oldest != self.active_id()
        {
            dropped.push(self.drop_oldest(oldest)?);
        }
        Ok(dropped)
    }

    fn active_id(&self) -> u64 {
        self.segments.keys().next_back().copied().unwrap_or(0)
    }

    fn start_segment(&mut self, accepted_before: u64) -> Result<(), SpoolError> {
        let id = self.next_id;
        self.next_id += 1;
        let name = segment_name(id);
        self.fs
            .append(&name, &format::header(accepted_before))
            .map_err(io_err("create", &name))?;
        self.fs
            .sync_dir()
            .map_err(io_err("sync", "the spool directory"))?;
        self.disk_bytes += HEADER_BYTES;
        self.segments.insert(
            id,
            Segment {
                meta: empty_meta(accepted_before),
                sealed: false,
            },
        );
        Ok(())
    }

    fn seal(&mut self, id: u64) -> Result<(), SpoolError> {
        let name = segment_name(id);
        self.fs.sync(&name).map_err(io_err("sync", &name))?;
        self.unsynced = false;
        self.synced_seq = self.last_seq;
        let Some(meta) = self.segments.get(&id).map(|s| s.meta) else {
            return Ok(());
        };
        self.write_meta(id, &meta)?;
        if let Some(s) = self.segments.get_mut(&id) {
            s.sealed = true;
        }
        Ok(())
    }

    fn delete_segment(&mut self, id: u64) -> Result<(), SpoolError> {
        if let Some(seg) = self.segments.remove(&id) {
            self.disk_bytes = self.disk_bytes.saturating_sub(seg.meta.bytes);
            self.disk_entries = self.disk_entries.saturating_sub(seg.meta.entries);
        }
        if self.read_position.is_some_and(|(_, h)| h.id == id) {
            self.read_position = None;
        }
        // Only the oldest segment is ever deleted: nothing before the next one is read again.
        self.recent.forget_before(Position {
            id: id + 1,
            offset: 0,
        });
        if self.chunk.as_ref().is_some_and(|c| c.id == id) {
            self.chunk = None;
        }
        self.delete_files(id)
    }

    fn delete_files(&mut self, id: u64) -> Result<(), SpoolError> {
        let name = segment_name(id);
        self.fs.remove(&name).map_err(io_err("delete", &name))?;
        let meta = meta_name(id);
        self.fs.remove(&meta).map_err(io_err("delete", &meta))
    }

    fn read_meta(&self, id: u64) -> Result<Option<SegmentMeta>, SpoolError> {
        let name = meta_name(id);
        let text = self.fs.read(&name).map_err(io_err("read", &name))?;
        Ok(text.and_then(|t| serde_json::from_slice(&t).ok()))
    }

    fn write_meta(&mut self, id: u64, meta: &SegmentMeta) -> Result<(), SpoolError> {
        let name = meta_name(id);
        let text = serde_json::to_vec(meta).unwrap_or_default();
        self.fs
            .replace(&name, &text, true)
            .map_err(io_err("write", &name))
    }

    fn save_state(&mut self, durable: bool) -> Result<(), SpoolError> {
        write_state(&mut self.fs, &self.state, durable)?;
        self.state_dirty = false;
        Ok(())
    }

    /// Reads a segment that may be torn, cuts everything after its last whole entry, and returns
    /// what it holds and how many bytes were cut.
    fn repair(&mut self, id: u64) -> Result<(SegmentMeta, u64), SpoolError> {
        let name = segment_name(id);
        let data = Bytes::from(
            self.fs
                .read(&name)
                .map_err(io_err("read", &name))?
                .unwrap_or_default(),
        );
        if data.len() < HEADER_BYTES as usize {
            // Created, header not written whole: treat as empty, rewrite the header.
            let accepted = self
                .segments
                .values()
                .last()
                .map_or(0, |s| s.meta.accepted_before + s.meta.records);
            self.fs.truncate(&name, 0).map_err(io_err("truncate", &name))?;
            self.fs
                .append(&name, &format::header(accepted))
                .map_err(io_err("write", &name))?;
            return Ok((empty_meta(accepted), data.len() as u64));
        }
        let accepted_before =
            parse_header(&data).ok_or_else(|| SpoolError::Foreign { name: name.clone() })?;
        let mut meta = empty_meta(accepted_before);
        let mut pos = HEADER_BYTES as usize;
        while let Scan::Entry(entry, size) = scan_entry(&data.slice(pos..)) {
            if meta.entries == 0 {
                meta.first_seq = entry.seq;
                meta.first_created_unix_ms = entry.created_unix_ms;
            }
            meta.entries += 1;
            meta.records += u64::from(entry.records);
            meta.last_seq = entry.seq;
            pos += size;
        }
        meta.bytes = pos as u64;
        let cut = (data.len() - pos) as u64;
        if cut > 0 {
            self.fs
                .truncate(&name, meta.bytes)
                .map_err(io_err("truncate", &name))?;
            self.fs.sync(&name).map_err(io_err("sync", &name))?;
        }
        Ok((meta, cut))
    }

    /// The entry at `offset` of segment `id` (whose valid bytes end at `end`).
    /// The entry at `offset` of segment `id` (whose whole entries end at `end`), and its size:
    /// from memory if it was appended recently, else from the chunk read last, else from disk.
    /// `None` if no whole, intact entry is there.
    fn entry_at(&mut self, id: u64, offset: u64, end: u64) -> Result<Option<(Entry, u64)>, SpoolError> {
        if let Some(entry) = self.recent.get(Position { id, offset }) {
            return Ok(Some((entry.clone(), entry.size())));
        }
        if let Some(chunk) = &self.chunk
            && chunk.id == id
            && (chunk.start..chunk.start + chunk.data.len() as u64).contains(&offset)
            && let Scan::Entry(entry, size) = scan_entry(&chunk.data.slice((offset - chunk.start) as usize..))
        {
            return Ok(Some((entry, size as u64)));
        }
        let name = segment_name(id);
        let mut want = (end - offset).min(READ_CHUNK as u64) as usize;
        loop {
            let data = Bytes::from(
                self.fs
                    .read_at(&name, offset, want)
                    .map_err(io_err("read", &name))?,
            );
            match scan_entry(&data) {
                Scan::Entry(entry, size) => {
                    self.chunk = Some(Chunk {
                        id,
                        start: offset,
                        data,
                    });
                    return Ok(Some((entry, size as u64)));
                }
                // An entry larger than the chunk: read exactly it.
                Scan::Incomplete
                    if data.len() >= format::ENTRY_HEADER_BYTES && want < (end - offset) as usize =>
                {
                    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize
                        + format::ENTRY_HEADER_BYTES;
                    if len <= want || len as u64 > end - offset {
                        return Ok(None);
                    }
                    want = len;
                }
                _ => return Ok(None),
            }
        }
    }
}

fn write_state<F: SpoolFs>(fs: &mut F, state: &PersistentState, durable: bool) -> Result<(), SpoolError> {
    let text = serde_json::to_vec(state).unwrap_or_default();
    fs.replace(STATE_FILE, &text, durable)
        .map_err(io_err("write", STATE_FILE))
}

fn empty_meta(accepted_before: u64) -> SegmentMeta {
    SegmentMeta {
        bytes: HEADER_BYTES,
        entries: 0,
        records: 0,
        first_seq: 0,
        last_seq: 0,
        accepted_before,
        first_created_unix_ms: 0,
    }
}

#[cfg(test)]
mod tests;
