//! The spool's view of a filesystem: one directory of files, the operations the spool needs, and
//! nothing else, so that a model test can run the spool over [`MemFs`] and crash it at will.
//!
//! [`RealFs`] is a directory on disk. [`MemFs`] keeps files in memory, survives the spool being
//! dropped (a process crash: what was written stays), and can tear the next append part-way (a
//! crash in the middle of a write).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub trait SpoolFs: Send + 'static {
    /// Whether calls may wait on a device (so the spool task runs them on the blocking pool).
    /// False for memory: handing work to another thread would cost more than the work.
    const MAY_BLOCK: bool = true;
    /// Names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// The whole file, or `None` if there is no such file.
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// Up to `len` bytes from `offset` (fewer at the end of the file).
    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Appends to `name`, creating it if needed.
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    /// Removes `name` (no error if it is already gone).
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Replaces a small file atomically. With `durable`, it is synced and so is the directory
    /// entry: after a power loss the file holds the old content or the new, never a mix.
    fn replace(&mut self, name: &str, bytes: &[u8], durable: bool) -> io::Result<()>;
    /// Makes what was appended to `name` durable.
    fn sync(&mut self, name: &str) -> io::Result<()>;
    /// Makes created and removed names durable.
    fn sync_dir(&mut self) -> io::Result<()>;
}

/// A directory on disk.
pub struct RealFs {
    dir: PathBuf,
    /// Append handles (the active segment) and read handles, kept open.
    writers: HashMap<String, File>,
    readers: Mutex<HashMap<String, File>>,
}

impl RealFs {
    pub fn new(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            writers: HashMap::new(),
            readers: Mutex::new(HashMap::new()),
        })
    }

    fn forget(&mut self, name: &str) {
        self.writers.remove(name);
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

impl SpoolFs for RealFs {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.dir.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if !readers.contains_key(name) {
            readers.insert(name.to_owned(), File::open(self.dir.join(name))?);
        }
        let Some(file) = readers.get(name) else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut buf[filled..], offset + filled as u64)? {
                0 => break,
                n => filled += n,
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        if !self.writers.contains_key(name) {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))?;
            self.writers.insert(name.to_owned(), file);
        }
        match self.writers.get_mut(name) {
            Some(file) => file.write_all(bytes),
            None => Err(io::Error::other("append handle vanished")),
        }
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.forget(name);
        OpenOptions::new()
            .write(true)
            .open(self.dir.join(name))?
            .set_len(len)
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.forget(name);
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn replace(&mut self, name: &str, bytes: &[u8], durable: bool) -> io::Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(name))?;
        if durable {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        match self.writers.get(name) {
            Some(file) => file.sync_data(),
            None => OpenOptions::new()
                .write(true)
                .open(self.dir.join(name))?
                .sync_data(),
        }
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

#[derive(Default)]
struct MemState {
    files: BTreeMap<String, Vec<u8>>,
    /// Write only this many bytes of the next append, then fail: a crash mid-write.
    tear_next_append: Option<usize>,
    /// After a torn append the process is "dead": nothing else changes until [`MemFs::revive`].
    dead: bool,
    /// Appends fail as on a full disk (and write nothing) while set.
    full: bool,
    /// Syncs fail while set.
    sync_fails: bool,
}

/// Files in memory; clones share them, so a test can drop the spool ("crash") and open a new
/// one on the same files.
#[derive(Clone, Default)]
pub struct MemFs(Arc<Mutex<MemState>>);

impl MemFs {
    fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next append writes only its first `bytes` bytes and fails, and the "process" dies:
    /// every later change fails until [`revive`](Self::revive) (the restart).
    pub fn tear_next_append(&self, bytes: usize) {
        self.state().tear_next_append = Some(bytes);
    }

    pub fn revive(&self) {
        self.state().dead = false;
    }

    /// While `full`, appends fail with "no space left on device" and write nothing.
    pub fn set_full(&self, full: bool) {
        self.state().full = full;
    }

    /// While set, syncs fail (as after a write-back error).
    pub fn set_sync_fails(&self, fails: bool) {
        self.state().sync_fails = fails;
    }

    /// Flips the bits of byte `at` of `name` (damage on disk).
    pub fn corrupt_byte(&self, name: &str, at: usize) {
        if let Some(byte) = self.state().files.get_mut(name).and_then(|f| f.get_mut(at)) {
            *byte ^= 0xff;
        }
    }

    fn alive(&self) -> io::Result<std::sync::MutexGuard<'_, MemState>> {
        let state = self.state();
        if state.dead {
            return Err(io::Error::other("process crashed"));
        }
        Ok(state)
    }

    /// Total bytes of the files whose names end with `suffix`.
    pub fn bytes_of(&self, suffix: &str) -> u64 {
        self.state()
            .files
            .iter()
            .filter(|(n, _)| n.ends_with(suffix))
            .map(|(_, b)| b.len() as u64)
            .sum()
    }
}

impl SpoolFs for MemFs {
    const MAY_BLOCK: bool = false;
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state().files.keys().cloned().collect())
    }

    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.state().files.get(name).cloned())
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let state = self.state();
        let file = state
            .files
            .get(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_owned()))?;
        let start = (offset as usize).min(file.len());
        let end = start.saturating_add(len).min(file.len());
        Ok(file[start..end].to_vec())
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.alive()?;
        if state.full {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        let tear = state.tear_next_append.take();
        if tear.is_some() {
            state.dead = true;
        }
        let file = state.files.entry(name.to_owned()).or_default();
        match tear {
            Some(n) => {
                file.extend_from_slice(&bytes[..n.min(bytes.len())]);
                Err(io::Error::other("torn write (simulated crash)"))
            }
            None => {
                file.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        if let Some(f) = self.alive()?.files.get_mut(name) {
            f.truncate(len as usize);
        }
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.alive()?.files.remove(name);
        Ok(())
    }

    fn replace(&mut self, name: &str, bytes: &[u8], _durable: bool) -> io::Result<()> {
        self.alive()?.files.insert(name.to_owned(), bytes.to_vec());
        Ok(())
    }

    fn sync(&mut self, _name: &str) -> io::Result<()> {
        if self.alive()?.sync_fails {
            return Err(io::Error::other("sync failed (simulated write-back error)"));
        }
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        Ok(())
    }
}
