//! The spool's files: segment files (start, seal, delete), their sidecars, and `state.json`.
//!
//! Owns: [`PersistentState`] (what survives restarts besides the segments) and every write of a
//! sidecar or of the state. Must never: delete a segment's file before what it held is settled
//! or counted, or write the state other than by atomic replace.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::format::{self, HEADER_BYTES, SegmentMeta, meta_name, segment_name};
use super::fs::SpoolFs;
use super::{Position, Segment, Spool, SpoolError, io_err};

/// What survives restarts besides the segments.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PersistentState {
    /// Every batch with seq <= this is settled.
    pub(super) acked_through: u64,
    /// Batches above the watermark settled out of order (nacked, or split into new batches):
    /// seq → records.
    pub(super) removed: BTreeMap<u64, u32>,
    pub(super) dropped_batches: u64,
    pub(super) dropped_records: u64,
    pub(super) dropped_segments: u64,
    /// Segments with an id up to this were dropped (and counted) even if a crash left the file.
    pub(super) dropped_through_id: u64,
}

pub(super) const STATE_FILE: &str = "state.json";

impl<F: SpoolFs> Spool<F> {
    pub(super) fn active_id(&self) -> u64 {
        self.segments.keys().next_back().copied().unwrap_or(0)
    }

    pub(super) fn start_segment(&mut self, accepted_before: u64) -> Result<(), SpoolError> {
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

    pub(super) fn seal(&mut self, id: u64) -> Result<(), SpoolError> {
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

    pub(super) fn delete_segment(&mut self, id: u64) -> Result<(), SpoolError> {
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

    pub(super) fn delete_files(&mut self, id: u64) -> Result<(), SpoolError> {
        let name = segment_name(id);
        self.fs.remove(&name).map_err(io_err("delete", &name))?;
        let meta = meta_name(id);
        self.fs.remove(&meta).map_err(io_err("delete", &meta))
    }

    pub(super) fn read_meta(&self, id: u64) -> Result<Option<SegmentMeta>, SpoolError> {
        let name = meta_name(id);
        let text = self.fs.read(&name).map_err(io_err("read", &name))?;
        Ok(text.and_then(|t| serde_json::from_slice(&t).ok()))
    }

    pub(super) fn write_meta(&mut self, id: u64, meta: &SegmentMeta) -> Result<(), SpoolError> {
        let name = meta_name(id);
        let text = serde_json::to_vec(meta).unwrap_or_default();
        self.fs
            .replace(&name, &text, true)
            .map_err(io_err("write", &name))
    }

    pub(super) fn save_state(&mut self, durable: bool) -> Result<(), SpoolError> {
        write_state(&mut self.fs, &self.state, durable)?;
        self.state_dirty = false;
        Ok(())
    }
}

pub(super) fn write_state<F: SpoolFs>(
    fs: &mut F,
    state: &PersistentState,
    durable: bool,
) -> Result<(), SpoolError> {
    let text = serde_json::to_vec(state).unwrap_or_default();
    fs.replace(STATE_FILE, &text, durable)
        .map_err(io_err("write", STATE_FILE))
}

pub(super) fn empty_meta(accepted_before: u64) -> SegmentMeta {
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
