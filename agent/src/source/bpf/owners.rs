//! The owner of a socket the BPF programs saw created: the pid, name and cgroup id they took
//! at `socket()`, made into an [`Owner`] with a cgroup path and what the path says.
//!
//! Owns: the process name (the main thread's `comm` while the process lives and started before
//! the socket, so a reused pid is not taken for the creator; else the name of the thread that
//! created the socket, as the program saw it), the cgroup path of each owner: `/proc/PID/cgroup` while the process lives (the same
//! choice of line as the procfs owners), else the cgroup v2 directory whose inode number is the
//! cgroup id the program read (a process that exited before the meter looked is still placed);
//! caches by pid and cgroup id, both bounded. Must never: fail (an unknown path is empty), or
//! walk the cgroup tree more than once per [`WALK_EVERY`].

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::wire::BpfOwner;
use crate::source::owner::{Owner, cgroup};

/// Entries each cache holds at most; a full cache is emptied and fills again.
const CACHE_CAP: usize = 8_192;

/// The cgroup tree is walked again for an unknown id at most this often.
pub const WALK_EVERY: Duration = Duration::from_secs(5);

pub struct OwnerResolver {
    proc_root: PathBuf,
    /// The cgroup v2 mount, when there is one.
    cgroup_root: Option<PathBuf>,
    /// By (pid, cgroup id, name): a process keeps its owner until it moves or the pid is reused
    /// by another program.
    by_process: HashMap<(u32, u64, String), Arc<Owner>>,
    /// Cgroup id → path under the v2 root (`/` for the root).
    by_cgroup_id: HashMap<u64, String>,
    last_walk: Option<Instant>,
}

impl OwnerResolver {
    pub fn new(cgroup_root: Option<PathBuf>) -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            cgroup_root,
            by_process: HashMap::new(),
            by_cgroup_id: HashMap::new(),
            last_walk: None,
        }
    }

    pub fn resolve(&mut self, o: &BpfOwner) -> Arc<Owner> {
        let key = (o.pid, o.cgroup_id, o.comm.clone());
        if let Some(owner) = self.by_process.get(&key) {
            return Arc::clone(owner);
        }
        // `/proc/PID` speaks for the socket's creator only if it started before the socket: a
        // pid reused since names another program.
        let process = procfs::process::Process::new_with_root(self.proc_root.join(o.pid.to_string()))
            .ok()
            .filter(|p| started_by(p, o.created_ns));
        let cgroup = process
            .as_ref()
            .and_then(|p| p.cgroups().ok())
            .map(|g| cgroup::choose(&g.0))
            .or_else(|| self.path_of(o.cgroup_id))
            .unwrap_or_default();
        // The program saw the creating thread's name (a runtime's worker: `tokio-runtime-w`);
        // the process's is its main thread's, while it lives.
        let name = process
            .as_ref()
            .and_then(|p| p.stat().ok())
            .map_or_else(|| o.comm.clone(), |stat| stat.comm);
        let owner = Arc::new(Owner::placed(o.pid, name, cgroup));
        if self.by_process.len() >= CACHE_CAP {
            self.by_process.clear();
        }
        self.by_process.insert(key, Arc::clone(&owner));
        owner
    }

    /// The v2 path of cgroup `id`, walking the tree again when it is unknown (at most once per
    /// [`WALK_EVERY`]).
    fn path_of(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.by_cgroup_id.get(&id) {
            return Some(path.clone());
        }
        let root = self.cgroup_root.clone()?;
        if self.last_walk.is_some_and(|at| at.elapsed() < WALK_EVERY) {
            return None;
        }
        self.last_walk = Some(Instant::now());
        self.by_cgroup_id = walk(&root);
        self.by_cgroup_id.get(&id).cloned()
    }
}

/// Whether `process` started before `created_ns` (CLOCK_MONOTONIC; the process's start time
/// counts from boot, which is the same clock on a host that has not been suspended; a second of
/// slack covers the start time's resolution).
fn started_by(process: &procfs::process::Process, created_ns: u64) -> bool {
    let Ok(stat) = process.stat() else { return false };
    let per_tick = 1_000_000_000 / procfs::ticks_per_second().max(1);
    stat.starttime.saturating_mul(per_tick) <= created_ns.saturating_add(1_000_000_000)
}

/// Every directory of the cgroup tree at `root` by inode number (a cgroup v2 id), as a path
/// from the root.
fn walk(root: &Path) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), String::from("/"))];
    while let Some((dir, path)) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        out.insert(meta.ino(), path.clone());
        if out.len() >= CACHE_CAP {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if path == "/" {
                    format!("/{name}")
                } else {
                    format!("{path}/{name}")
                };
                stack.push((entry.path(), child));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_id_is_found_by_the_inode_of_its_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let leaf = root.path().join("system.slice").join("nginx.service");
        std::fs::create_dir_all(&leaf).expect("dirs");
        let id = std::fs::metadata(&leaf).expect("meta").ino();
        let mut r = OwnerResolver::new(Some(root.path().to_path_buf()));
        r.proc_root = root.path().join("no-proc");
        let owner = r.resolve(&BpfOwner {
            cgroup_id: id,
            created_ns: 0,
            pid: 4_000_000,
            uid: 0,
            comm: "nginx".into(),
        });
        assert_eq!(owner.cgroup, "/system.slice/nginx.service");
        assert_eq!(owner.systemd_unit, "nginx.service");
        assert_eq!((owner.pid, owner.process_name.as_str()), (4_000_000, "nginx"));
    }

    #[test]
    fn a_live_process_is_placed_by_its_proc_cgroup() {
        let me = std::process::id();
        let mut r = OwnerResolver::new(None);
        let created_ns = {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
        };
        let owner = r.resolve(&BpfOwner {
            cgroup_id: 0,
            created_ns,
            pid: me,
            uid: 0,
            comm: "test".into(),
        });
        let groups = procfs::process::Process::myself()
            .and_then(|p| p.cgroups())
            .expect("own cgroups");
        assert_eq!(owner.cgroup, cgroup::choose(&groups.0));
        let name = std::fs::read_to_string("/proc/self/comm").expect("comm");
        assert_eq!(
            owner.process_name,
            name.trim_end(),
            "the process's name, not the thread's"
        );
    }
}
