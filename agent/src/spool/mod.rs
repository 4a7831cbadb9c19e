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
//!
//! Sans-IO apart from the [`fs::SpoolFs`] it is given: no clock, no tasks. The spool's pieces:
//! this module (its types and the operations the task calls), `recover` (start-up), `read`
//! (reading entries back, in order), `caps` (dropping the oldest at the caps, and damaged
//! segments), `files` (segment files, sidecars and `state.json`).

mod caps;
mod files;
pub mod format;
pub mod fs;
pub mod handle;
mod read;
mod recover;
pub mod task;

use std::collections::BTreeMap;

use bytes::Bytes;

use files::{PersistentState, empty_meta};
pub use format::Entry;
use format::{HEADER_BYTES, SegmentMeta, segment_name};
use fs::SpoolFs;
use read::{Chunk, Recent};

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

/// Recently spooled batches also kept in memory, so a sender that keeps up never reads the disk.
const RECENT_BYTES: u64 = 8 << 20;

impl From<&crate::config::SpoolConfig> for SpoolLimits {
    fn from(config: &crate::config::SpoolConfig) -> Self {
        SpoolLimits {
            max_bytes: config.max_bytes,
            max_entries: config.max_entries,
            segment_bytes: config.segment_bytes,
            recent_bytes: RECENT_BYTES.min(config.max_bytes),
        }
    }
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
    /// Its sidecar's summary (kept current for the active segment).
    meta: SegmentMeta,
    /// Closed: its sidecar is written and nothing is appended to it again.
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
}

#[cfg(test)]
mod tests;
