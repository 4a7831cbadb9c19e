//! The caps: dropping the oldest segment to make room, and dropping damaged segments.
//!
//! Owns: what a drop counts as lost (the pending entries of the segment), saved durably before
//! the file goes. Must never: drop a segment without counting what it held that was pending, or
//! count it twice (a crash between the count and the delete).

use super::format::HEADER_BYTES;
use super::fs::SpoolFs;
use super::{Counted, Dropped, Head, Spool, SpoolError, files::write_state};
impl<F: SpoolFs> Spool<F> {
    /// Drops the oldest segments until `size` more bytes and one more batch fit.
    pub(super) fn make_room(&mut self, size: u64) -> Result<Vec<Dropped>, SpoolError> {
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

    pub(super) fn drop_oldest(&mut self, id: u64) -> Result<Dropped, SpoolError> {
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
}
