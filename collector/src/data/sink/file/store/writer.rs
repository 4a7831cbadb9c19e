//! The segment store's writer: appends batches to per-org segment files, rotates them, keeps the
//! total size under a byte cap by deleting the oldest segment, and recovers at start-up.
//!
//! Owns: the files under `DATA_DIR/segments/` and the `DATA_DIR/LOCK` that keeps a second
//! collector out. Blocking I/O only: it runs on the file sink's own thread. Recovery reads each
//! org's tail segment (the only one that can be torn) and the small `.meta` sidecars of the others;
//! it never scans sealed segments. Must never: run on an async runtime thread, or delete anything
//! but its own oldest segments.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::segment::{
    self, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC, SegmentMeta, meta_file_name, parse_segment_file_name,
    segment_file_name,
};
use crate::data::sink::identity::valid_org_id;

/// Size limits of the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Rotate to a new segment once the current one would grow past this.
    pub segment_bytes: u64,
    /// Cap on the total size of all segment files.
    pub max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "data directory {dir} is in use by another collector (it holds {dir}/LOCK); give each collector its own data_dir"
    )]
    Locked { dir: PathBuf },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a ringflow segment file; move it out of the data directory")]
    Foreign { path: PathBuf },
    #[error(
        "{path} was deleted or replaced while the collector was writing it (were files under data_dir removed?); \
         its batches are written again to a new segment"
    )]
    Vanished { path: PathBuf },
}

impl StoreError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// True when data written before this error may not be on disk after all: a failed sync
    /// (the kernel may have dropped the pages it could not write) or a segment that vanished.
    /// Everything written since the last successful sync must be written again.
    pub fn lost_durability(&self) -> bool {
        matches!(
            self,
            StoreError::Io { op: "sync", .. } | StoreError::Vanished { .. }
        )
    }

    /// True when the directory cannot be used as configured (not a directory, no permission,
    /// read-only): the operator must fix `data_dir`, and retrying changes nothing.
    pub fn is_unusable_directory(&self) -> bool {
        matches!(self, StoreError::Io { op: "create" | "open" | "lock", source, .. }
            if matches!(source.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::NotADirectory | io::ErrorKind::ReadOnlyFilesystem))
    }

    /// True when the disk is full (or over quota): worth retrying after space is freed.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. }
            if source.raw_os_error() == Some(libc::ENOSPC) || source.raw_os_error() == Some(libc::EDQUOT))
    }
}

/// A segment deleted to stay under the byte cap; its contents count as dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub org: String,
    pub segment: u64,
    pub meta: SegmentMeta,
}

/// What start-up found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub orgs: usize,
    pub segments: usize,
    pub bytes: u64,
    /// Segment files whose contents were read (tails, and segments sealed without a sidecar).
    pub segments_scanned: usize,
    /// Bytes cut off torn tails.
    pub truncated_bytes: u64,
}

struct Active {
    id: u64,
    file: File,
    path: PathBuf,
    meta: SegmentMeta,
    unsynced: bool,
    /// Appended to since the last [`SegmentStore::verify_active`].
    unverified: bool,
}

struct Sealed {
    org: String,
    meta: SegmentMeta,
}

pub struct SegmentStore {
    segments_dir: PathBuf,
    limits: StoreLimits,
    _lock: File,
    /// The segment each org is appending to, if any.
    active: HashMap<String, Active>,
    /// Closed segments by id (= age order across orgs).
    sealed: BTreeMap<u64, Sealed>,
    total_bytes: u64,
    next_id: u64,
    scratch: Vec<u8>,
    /// Segments deleted by the byte cap and not yet taken by the caller to count.
    evicted: Vec<Evicted>,
}

impl SegmentStore {
    /// Opens (creating if needed) the store in `data_dir`, takes its lock and recovers.
    pub fn open(data_dir: &Path, limits: StoreLimits) -> Result<(Self, RecoveryReport), StoreError> {
        let segments_dir = data_dir.join("segments");
        std::fs::create_dir_all(&segments_dir).map_err(StoreError::io("create", &segments_dir))?;
        sync_dir(data_dir)?;
        let lock_path = data_dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StoreError::io("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir: data_dir.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::io("lock", &lock_path)(e)),
        }
        let mut store = SegmentStore {
            segments_dir,
            limits,
            _lock: lock,
            active: HashMap::new(),
            sealed: BTreeMap::new(),
            total_bytes: 0,
            next_id: 1,
            scratch: Vec::new(),
            evicted: Vec::new(),
        };
        let report = store.recover()?;
        Ok((store, report))
    }

    fn recover(&mut self) -> Result<RecoveryReport, StoreError> {
        let mut report = RecoveryReport::default();
        for org in list_orgs(&self.segments_dir)? {
            report.orgs += 1;
            let org_dir = self.segments_dir.join(&org);
            remove_temporary_files(&org_dir)?;
            let ids = list_segments(&org_dir)?;
            for (i, &id) in ids.iter().enumerate() {
                self.next_id = self.next_id.max(id + 1);
                let path = org_dir.join(segment_file_name(id));
                let is_tail = i + 1 == ids.len();
                let meta = match read_meta(&org_dir, id, &path) {
                    Some(meta) => meta,
                    None => {
                        report.segments_scanned += 1;
                        let (meta, cut) = repair_segment(&path)?;
                        report.truncated_bytes += cut;
                        if is_tail {
                            // The tail stays open for appending: no sidecar until it is sealed.
                            let file = open_append(&path)?;
                            self.total_bytes += meta.bytes;
                            report.segments += 1;
                            report.bytes += meta.bytes;
                            self.active.insert(
                                org.clone(),
                                Active {
                                    id,
                                    file,
                                    path,
                                    meta,
                                    unsynced: false,
                                    unverified: false,
                                },
                            );
                            continue;
                        }
                        write_meta(&org_dir, id, &meta)?;
                        meta
                    }
                };
                self.total_bytes += meta.bytes;
                report.segments += 1;
                report.bytes += meta.bytes;
                self.sealed.insert(
                    id,
                    Sealed {
                        org: org.clone(),
                        meta,
                    },
                );
            }
        }
        Ok(report)
    }

    /// Appends one batch for `org`: written to the OS, not yet synced. Segments deleted to make
    /// room are kept for [`take_evicted`](Self::take_evicted), whether or not the append succeeds.
    pub fn append(&mut self, org: &str, body: &[u8], records: u32) -> Result<(), StoreError> {
        let entry_bytes = (segment::ENTRY_HEADER_BYTES + body.len()) as u64;
        // Rotate first, so that the room made below accounts for a new segment's header.
        if let Some(active) = self.active.get(org)
            && active.meta.entries > 0
            && active.meta.bytes + entry_bytes > self.limits.segment_bytes
        {
            self.seal(org)?;
        }
        // Room for a segment header too: eviction may close this org's segment and start another.
        self.make_room(SEGMENT_HEADER_BYTES + entry_bytes)?;
        if !self.active.contains_key(org) {
            self.start_segment(org)?;
        }
        self.scratch.clear();
        segment::encode_entry(body, records, &mut self.scratch);
        let Some(active) = self.active.get_mut(org) else {
            unreachable!("start_segment inserted the active segment");
        };
        if let Err(e) = active.file.write_all(&self.scratch) {
            // Cut the partial entry off so the segment stays a clean sequence of entries. If even
            // that fails, close the segment at its last good byte; readers stop there.
            if active.file.set_len(active.meta.bytes).is_err() {
                let _ = self.seal(org);
            }
            return Err(StoreError::io("write", &self.segments_dir.join(org))(e));
        }
        active.meta.bytes += entry_bytes;
        active.meta.entries += 1;
        active.meta.records += u64::from(records);
        active.unsynced = true;
        active.unverified = true;
        self.total_bytes += entry_bytes;
        Ok(())
    }

    /// The segments deleted by the byte cap since the last call; their batches count as dropped.
    pub fn take_evicted(&mut self) -> Vec<Evicted> {
        std::mem::take(&mut self.evicted)
    }

    /// Checks that every segment appended to since the last check is still the file at its path.
    /// One that was deleted or replaced (someone removed files under `data_dir`) is dropped from
    /// the store: what was written to it is gone, so the caller must write it again.
    pub fn verify_active(&mut self) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt;
        let mut vanished = None;
        for (org, active) in self.active.iter_mut().filter(|(_, a)| a.unverified) {
            let same = match (active.file.metadata(), std::fs::metadata(&active.path)) {
                (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
                _ => false,
            };
            if same {
                active.unverified = false;
            } else {
                vanished = Some(org.clone());
                break;
            }
        }
        let Some(org) = vanished else {
            return Ok(());
        };
        let Some(active) = self.active.remove(&org) else {
            return Ok(());
        };
        self.total_bytes = self.total_bytes.saturating_sub(active.meta.bytes);
        Err(StoreError::Vanished { path: active.path })
    }

    /// Makes everything appended so far durable (fdatasync of each segment written to).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        for active in self.active.values_mut().filter(|a| a.unsynced) {
            active
                .file
                .sync_data()
                .map_err(StoreError::io("sync", &active.path))?;
            active.unsynced = false;
        }
        Ok(())
    }

    /// Total bytes of all segment files.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The byte cap past which the oldest segments are deleted.
    pub fn max_bytes(&self) -> u64 {
        self.limits.max_bytes
    }

    pub fn segment_count(&self) -> usize {
        self.sealed.len() + self.active.len()
    }

    /// Deletes the oldest segments (sealed or active, across all orgs) until `need` more bytes
    /// fit under the cap.
    fn make_room(&mut self, need: u64) -> Result<(), StoreError> {
        while self.total_bytes + need > self.limits.max_bytes {
            let oldest_sealed = self.sealed.keys().next().copied();
            let oldest_active = self.active.iter().map(|(org, a)| (a.id, org.clone())).min();
            let id = match (oldest_sealed, oldest_active) {
                (Some(s), Some((a, _))) if s < a => s,
                (_, Some((_, org))) => self.seal(&org)?,
                (Some(s), None) => s,
                (None, None) => break,
            };
            let Some(sealed) = self.sealed.get(&id) else {
                break;
            };
            let org_dir = self.segments_dir.join(&sealed.org);
            let path = org_dir.join(segment_file_name(id));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                // Already gone (removed by hand): it no longer takes space either way.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("delete", &path)(e)),
            }
            let _ = std::fs::remove_file(org_dir.join(meta_file_name(id)));
            let Some(sealed) = self.sealed.remove(&id) else {
                break;
            };
            self.total_bytes = self.total_bytes.saturating_sub(sealed.meta.bytes);
            self.evicted.push(Evicted {
                org: sealed.org,
                segment: id,
                meta: sealed.meta,
            });
        }
        Ok(())
    }

    /// Closes `org`'s active segment: syncs it and writes its sidecar. Returns its id.
    fn seal(&mut self, org: &str) -> Result<u64, StoreError> {
        let Some(active) = self.active.remove(org) else {
            unreachable!("seal is only called for an org with an active segment");
        };
        let sync = active.file.sync_data();
        let org_dir = self.segments_dir.join(org);
        let meta_written = write_meta(&org_dir, active.id, &active.meta);
        // Sealed either way: even if the sidecar could not be written, start-up rescans it.
        self.sealed.insert(
            active.id,
            Sealed {
                org: org.to_owned(),
                meta: active.meta,
            },
        );
        sync.map_err(StoreError::io("sync", &active.path))?;
        meta_written?;
        Ok(active.id)
    }

    fn start_segment(&mut self, org: &str) -> Result<(), StoreError> {
        let org_dir = self.segments_dir.join(org);
        if !org_dir.is_dir() {
            std::fs::create_dir_all(&org_dir).map_err(StoreError::io("create", &org_dir))?;
            // The new org directory's own entry must be durable too.
            sync_dir(&self.segments_dir)?;
        }
        let id = self.next_id;
        self.next_id += 1;
        let path = org_dir.join(segment_file_name(id));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(StoreError::io("create", &path))?;
        file.write_all(&SEGMENT_MAGIC)
            .map_err(StoreError::io("write", &path))?;
        // Make the new file's directory entry durable, or a power loss could lose the segment.
        sync_dir(&org_dir)?;
        self.total_bytes += SEGMENT_HEADER_BYTES;
        self.active.insert(
            org.to_owned(),
            Active {
                id,
                file,
                path,
                meta: SegmentMeta {
                    bytes: SEGMENT_HEADER_BYTES,
                    entries: 0,
                    records: 0,
                },
                unsynced: true,
                unverified: true,
            },
        );
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("sync", dir))
}

/// Org directories under `segments_dir` (names that are valid org ids), sorted.
pub fn list_orgs(segments_dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut orgs = Vec::new();
    let entries = match std::fs::read_dir(segments_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(orgs),
        Err(e) => return Err(StoreError::io("list", segments_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list", segments_dir))?;
        if let Some(name) = entry.file_name().to_str()
            && valid_org_id(name)
            && entry.path().is_dir()
        {
            orgs.push(name.to_owned());
        }
    }
    orgs.sort();
    Ok(orgs)
}

/// Segment ids in an org directory, oldest first.
pub fn list_segments(org_dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::new();
    let entries = match std::fs::read_dir(org_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(StoreError::io("list", org_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list", org_dir))?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// A sealed segment's sidecar, if present, readable, and consistent with the file's size.
pub fn read_meta(org_dir: &Path, id: u64, segment_path: &Path) -> Option<SegmentMeta> {
    let text = std::fs::read(org_dir.join(meta_file_name(id))).ok()?;
    let meta: SegmentMeta = serde_json::from_slice(&text).ok()?;
    let len = std::fs::metadata(segment_path).ok()?.len();
    // A file shorter than its sidecar lost data it had promised (power loss): rescan it.
    (len >= meta.bytes).then_some(meta)
}

fn write_meta(org_dir: &Path, id: u64, meta: &SegmentMeta) -> Result<(), StoreError> {
    let path = org_dir.join(meta_file_name(id));
    let tmp = org_dir.join(format!("{}.tmp", meta_file_name(id)));
    let text = serde_json::to_vec(meta).unwrap_or_default();
    std::fs::write(&tmp, text).map_err(StoreError::io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(StoreError::io("rename", &tmp))
}

fn remove_temporary_files(org_dir: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(org_dir).map_err(StoreError::io("list", org_dir))? {
        let entry = entry.map_err(StoreError::io("list", org_dir))?;
        if entry.file_name().to_str().is_some_and(|n| n.ends_with(".tmp")) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn open_append(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(StoreError::io("open", path))
}

/// Reads a segment that may be torn, truncates anything after its last whole entry, and returns
/// what it holds and how many bytes were cut.
fn repair_segment(path: &Path) -> Result<(SegmentMeta, u64), StoreError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(StoreError::io("read", path))?;
    let scan = segment::scan_segment(&data).map_err(|_| StoreError::Foreign {
        path: path.to_owned(),
    })?;
    let mut meta = scan.meta;
    if scan.invalid_tail_bytes > 0 || meta.bytes == 0 {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(StoreError::io("open", path))?;
        file.set_len(meta.bytes)
            .map_err(StoreError::io("truncate", path))?;
        if meta.bytes == 0 {
            // Only part of the header made it to disk: write it again.
            let mut file = open_append(path)?;
            file.write_all(&SEGMENT_MAGIC)
                .map_err(StoreError::io("write", path))?;
            meta.bytes = SEGMENT_HEADER_BYTES;
        }
        file.sync_all().map_err(StoreError::io("sync", path))?;
    }
    Ok((meta, scan.invalid_tail_bytes))
}

#[cfg(test)]
mod tests;
