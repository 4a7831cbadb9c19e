//! Reading entries back in seq order, and walking the head past what acks settled.
//!
//! Owns: [`Recent`] (recently appended entries kept in memory, so a sender that keeps up never
//! reads the disk), [`Chunk`] (the segment bytes read last) and the reads that use them. Must
//! never: skip a damaged entry (it is an error the caller handles, by dropping and counting), or
//! return a batch that is acked or settled out of order.

use bytes::Bytes;

use super::format::{self, HEADER_BYTES, Scan, scan_entry, segment_name};
use super::fs::SpoolFs;
use super::{Counted, Entry, Head, Position, Spool, SpoolError, corrupt, io_err};

/// Recently appended entries, by position (see [`SpoolLimits::recent_bytes`]). Entries leave
/// from the front: when over the byte limit, and as acks pass them.
pub(super) struct Recent {
    entries: std::collections::VecDeque<(Position, Entry)>,
    bytes: u64,
    limit: u64,
}

impl Recent {
    pub(super) fn new(limit: u64) -> Self {
        Recent {
            entries: Default::default(),
            bytes: 0,
            limit,
        }
    }

    pub(super) fn push(&mut self, at: Position, entry: Entry) {
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

    pub(super) fn get(&self, at: Position) -> Option<&Entry> {
        let i = self.entries.binary_search_by(|(p, _)| p.cmp(&at)).ok()?;
        self.entries.get(i).map(|(_, e)| e)
    }

    /// Forgets every entry before `at`.
    pub(super) fn forget_before(&mut self, at: Position) {
        while self.entries.front().is_some_and(|(p, _)| *p < at) {
            self.pop_front();
        }
    }
}

/// Bytes read from a segment, starting at `start`.
pub(super) struct Chunk {
    pub(super) id: u64,
    pub(super) start: u64,
    pub(super) data: Bytes,
}

/// Bytes read at a time when scanning a segment.
const READ_CHUNK: usize = 256 << 10;

impl<F: SpoolFs> Spool<F> {
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
    pub(super) fn advance_head(&mut self, up_to: u64) -> Result<Counted, SpoolError> {
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

    /// The entry at `offset` of segment `id` (whose valid bytes end at `end`).
    /// The entry at `offset` of segment `id` (whose whole entries end at `end`), and its size:
    /// from memory if it was appended recently, else from the chunk read last, else from disk.
    /// `None` if no whole, intact entry is there.
    pub(super) fn entry_at(
        &mut self,
        id: u64,
        offset: u64,
        end: u64,
    ) -> Result<Option<(Entry, u64)>, SpoolError> {
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
