//! Reading stored batches back: what `collector read` prints, and how tests check what arrived.
//!
//! Owns: a cursor (segment, offset) per org that moves forward through segments and copes with a
//! live writer (a half-written entry at the tail is "not yet", not an error) and with retention
//! deleting segments under it (reported as skipped). Must never: write to or lock the store; it is
//! safe to run while a collector writes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ringflow_proto::pb;

use super::segment::{EntryScan, SEGMENT_HEADER_BYTES, scan_entry, segment_file_name};
use super::writer::{StoreError, list_orgs, list_segments, read_meta};

/// What one pass of [`OrgReader::read_available`] noticed besides the batches it returned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadProgress {
    pub batches: usize,
    /// Data was deleted by retention before this reader got to it, and skipped. (How much is
    /// not knowable from here: segment ids are shared by all orgs, so a gap in one org's ids
    /// does not mean its segments were deleted.)
    pub skipped_by_retention: bool,
    /// Problems met, each with where (these entries are skipped).
    pub corruption: Vec<String>,
}

/// Forward-only reader of one org's segments.
#[derive(Debug)]
pub struct OrgReader {
    org_dir: PathBuf,
    /// Next segment and byte offset to read; `None` before the first read.
    position: Option<(u64, u64)>,
}

impl OrgReader {
    pub fn new(data_dir: &Path, org: &str) -> Self {
        Self {
            org_dir: data_dir.join("segments").join(org),
            position: None,
        }
    }

    /// Appends to `out` every whole batch stored after the cursor and moves the cursor past them.
    /// A batch still being written is left for the next call.
    pub fn read_available(&mut self, out: &mut Vec<pb::StoredBatch>) -> Result<ReadProgress, StoreError> {
        let mut progress = ReadProgress::default();
        let ids = list_segments(&self.org_dir)?;
        let Some(&first) = ids.first() else {
            return Ok(progress);
        };
        let (mut seg, mut offset) = match self.position {
            None => (first, SEGMENT_HEADER_BYTES),
            Some((seg, off)) if ids.contains(&seg) => (seg, off),
            Some((seg, _)) => match ids.iter().find(|&&id| id > seg) {
                // The segment under the cursor was deleted by retention.
                Some(&next) => {
                    progress.skipped_by_retention = true;
                    (next, SEGMENT_HEADER_BYTES)
                }
                None => return Ok(progress),
            },
        };
        loop {
            let path = self.org_dir.join(segment_file_name(seg));
            let limit = read_meta(&self.org_dir, seg, &path).map(|m| m.bytes);
            let data = match read_from(&path, offset, limit) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Bytes::new(),
                Err(source) => {
                    return Err(StoreError::Io {
                        op: "read",
                        path,
                        source,
                    });
                }
            };
            let mut pos = 0usize;
            loop {
                match scan_entry(&data[pos..]) {
                    EntryScan::Entry { body, size, .. } => {
                        let start = pos;
                        pos += size;
                        match ringflow_proto::columns::read_stored(data.slice_ref(body)) {
                            Ok(batch) => {
                                out.push(batch);
                                progress.batches += 1;
                            }
                            Err(e) => progress.corruption.push(format!(
                                "{}: entry at byte {} does not decode: {e}",
                                path.display(),
                                offset + start as u64
                            )),
                        }
                    }
                    EntryScan::Incomplete => break,
                    EntryScan::Corrupt(why) => {
                        progress.corruption.push(format!(
                            "{}: {why} at byte {}; the rest of this segment is unreadable",
                            path.display(),
                            offset + pos as u64
                        ));
                        break;
                    }
                }
            }
            offset += pos as u64;
            match ids.iter().find(|&&id| id > seg) {
                // A newer segment exists, so this one will not grow: move on.
                Some(&next) => {
                    seg = next;
                    offset = SEGMENT_HEADER_BYTES;
                }
                // The newest segment: stop at its end (or before bad bytes, which a restarted
                // collector truncates) and wait for more.
                None => break,
            }
        }
        self.position = Some((seg, offset));
        Ok(progress)
    }
}

fn read_from(path: &Path, offset: u64, limit: Option<u64>) -> std::io::Result<Bytes> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    match limit {
        Some(limit) => {
            file.take(limit.saturating_sub(offset)).read_to_end(&mut data)?;
        }
        None => {
            file.read_to_end(&mut data)?;
        }
    }
    Ok(Bytes::from(data))
}

/// Every org that has stored something under `data_dir`.
pub fn stored_orgs(data_dir: &Path) -> Result<Vec<String>, StoreError> {
    list_orgs(&data_dir.join("segments"))
}

/// Every batch stored for `org` (or for all orgs), oldest segment first. For tests and tools;
/// a store can be large, so prefer [`OrgReader`] for anything but a bounded one.
pub fn read_all(data_dir: &Path, org: Option<&str>) -> Result<Vec<pb::StoredBatch>, StoreError> {
    let orgs = match org {
        Some(o) => vec![o.to_owned()],
        None => stored_orgs(data_dir)?,
    };
    let mut out = Vec::new();
    for org in orgs {
        OrgReader::new(data_dir, &org).read_available(&mut out)?;
    }
    Ok(out)
}
