//! The meter's state directory: its stable id and its sequence-number reservation.
//!
//! Owns: `STATE_DIR/meter-id` and `STATE_DIR/seq`. Batch seqs must increase over the meter's whole
//! life, restarts and `kill -9` included, because `(meter_id, seq)` is the de-duplication key
//! downstream: a reused seq would make a new batch look like a resend and be dropped. So seqs are
//! reserved in blocks: before handing out any seq of a block, the block's end is written and
//! synced to `seq`; after a crash the meter starts at that end, skipping at most one block. Must
//! never: hand out a seq that is not covered by a synced reservation.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::valid_meter_id;

/// Seqs reserved per write of the `seq` file.
pub const SEQ_BLOCK: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {op} {path}: {source} (the meter needs a writable state_dir)")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds {content:?}, which is not {what}; fix or delete the file")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        content: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Creates the state directory if needed.
pub fn open_dir(dir: &Path) -> Result<(), StateError> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))
}

/// The meter id: `configured` if set, else the one kept in the state directory, else a new one
/// (written there for next time).
pub fn meter_id(dir: &Path, configured: Option<&str>) -> Result<String, StateError> {
    if let Some(id) = configured {
        return Ok(id.to_owned());
    }
    if let Some(id) = read_meter_id(dir)? {
        return Ok(id);
    }
    let id = format!("m-{}", hex::encode(rand::random::<[u8; 8]>()));
    write_synced(&dir.join("meter-id"), &id)?;
    Ok(id)
}

/// The id kept in the state directory, if there is one (nothing is written).
pub fn read_meter_id(dir: &Path) -> Result<Option<String>, StateError> {
    let path = dir.join("meter-id");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if valid_meter_id(id) {
                Ok(Some(id.to_owned()))
            } else {
                Err(StateError::Corrupt {
                    path,
                    what: "a meter id",
                    content: id.chars().take(40).collect(),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

/// Hands out strictly increasing seqs, each covered by a reservation synced to disk.
#[derive(Debug)]
pub struct SeqAllocator {
    path: PathBuf,
    next: u64,
    reserved_until: u64,
    block: u64,
}

impl SeqAllocator {
    /// Starts after everything a previous run may have used.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        Self::open_with_block(dir, SEQ_BLOCK)
    }

    /// As [`open`](Self::open), reserving `block` seqs at a time (tests use small blocks to
    /// reach the next reservation quickly).
    pub fn open_with_block(dir: &Path, block: u64) -> Result<Self, StateError> {
        let path = dir.join("seq");
        let start = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| StateError::Corrupt {
                path: path.clone(),
                what: "a sequence number",
                content: text.chars().take(40).collect(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let next = start.max(1);
        let mut alloc = SeqAllocator {
            path,
            next,
            reserved_until: next,
            block: block.max(1),
        };
        alloc.reserve()?;
        Ok(alloc)
    }

    /// Makes every later seq greater than `used` (the spool's highest seq: if the `seq` file was
    /// lost or restored from an old backup, seqs must still never repeat, or a collector would
    /// take new batches for duplicates).
    pub fn skip_past(&mut self, used: u64) -> Result<(), StateError> {
        if used >= self.next {
            self.next = used + 1;
            self.reserve()?;
        }
        Ok(())
    }

    /// The next seq.
    pub fn next_seq(&mut self) -> Result<u64, StateError> {
        if self.next >= self.reserved_until {
            self.reserve()?;
        }
        let seq = self.next;
        self.next += 1;
        Ok(seq)
    }

    fn reserve(&mut self) -> Result<(), StateError> {
        let until = self.next.saturating_add(self.block);
        write_synced(&self.path, &until.to_string())?;
        self.reserved_until = until;
        Ok(())
    }
}

/// Writes `text` to `path` atomically and durably (temporary file, sync, rename, sync of the
/// directory).
pub(crate) fn write_synced(path: &Path, text: &str) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", &tmp))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_id_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = meter_id(dir.path(), None).unwrap();
        let b = meter_id(dir.path(), None).unwrap();
        assert_eq!(a, b);
        assert!(valid_meter_id(&a));
        assert_eq!(meter_id(dir.path(), Some("fixed")).unwrap(), "fixed");
        fs::write(dir.path().join("meter-id"), "bad id!").unwrap();
        assert!(matches!(
            meter_id(dir.path(), None),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn seqs_never_repeat_across_restarts_even_without_clean_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        for _run in 0..3 {
            // Each run is dropped without any shutdown step, like kill -9.
            let mut alloc = SeqAllocator::open(dir.path()).unwrap();
            for _ in 0..5 {
                seen.push(alloc.next_seq().unwrap());
            }
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen[0], 1);
    }

    #[test]
    fn seqs_skip_past_what_the_spool_holds_even_if_the_seq_file_was_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut seqs = SeqAllocator::open_with_block(dir.path(), 10).unwrap();
        seqs.skip_past(500).unwrap();
        assert_eq!(seqs.next_seq().unwrap(), 501);
        // Lower than what is in use already: no effect.
        seqs.skip_past(3).unwrap();
        assert_eq!(seqs.next_seq().unwrap(), 502);
        drop(seqs);
        let mut again = SeqAllocator::open_with_block(dir.path(), 10).unwrap();
        assert!(again.next_seq().unwrap() > 502, "the skip was reserved durably");
    }

    #[test]
    fn a_new_block_is_reserved_before_it_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut alloc = SeqAllocator::open(dir.path()).unwrap();
        alloc.next = alloc.reserved_until; // at the end of the block
        let seq = alloc.next_seq().unwrap();
        let on_disk: u64 = fs::read_to_string(dir.path().join("seq"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(on_disk > seq);
    }
}
