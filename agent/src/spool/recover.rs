//! Start-up: what a crash left in the spool directory becomes a consistent [`Spool`].
//!
//! Owns: reading the sidecars and `state.json`, repairing the tail segment (cutting a torn
//! append), deleting what was acked or dropped before the crash, and walking the oldest segment
//! up to the ack watermark. Must never: read more than the tail and the oldest segment's
//! contents (start-up stays fast however big the spool is), or drop an intact pending entry.

use bytes::Bytes;

use super::files::STATE_FILE;
use super::format::{
    self, HEADER_BYTES, Scan, SegmentMeta, parse_header, parse_segment_name, scan_entry, segment_name,
};
use super::fs::SpoolFs;
use super::{Head, Recovery, Segment, Spool, SpoolError, empty_meta, io_err};
impl<F: SpoolFs> Spool<F> {
    pub(super) fn recover(&mut self) -> Result<Recovery, SpoolError> {
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

    /// Reads a segment that may be torn, cuts everything after its last whole entry, and returns
    /// what it holds and how many bytes were cut.
    pub(super) fn repair(&mut self, id: u64) -> Result<(SegmentMeta, u64), SpoolError> {
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
}
