//! Who made a flow: the process that owns a socket (pid, name) and where it runs (cgroup, and
//! from the cgroup path a container id, a Kubernetes pod uid and a systemd unit).
//!
//! Owns: [`OwnerIndex`], socket inode → [`Owner`], learned from `/proc/*/fd` (a descriptor that
//! reads `socket:[INODE]`) through the `procfs` crate, and the per-process owner data (name,
//! cgroup) keyed by pid and start time. Must never: cost more than its budget per call (at most
//! `scan_budget` processes' descriptor tables, the ones read longest ago first; a miss that
//! needs more continues on the next call), hold more than `max_entries` inodes (the oldest are
//! evicted and counted) or pending inodes, fail or log because of what it may not read.
//!
//! **Privileges.** An unprivileged meter reads the descriptor tables of its own user's
//! processes only: another user's `/proc/PID/fd` answers `EACCES`, so their sockets have no
//! owner (their records carry none; the denials are counted in
//! [`OwnerStats::permission_denied`], never logged per process). Root, or a meter with
//! `CAP_SYS_PTRACE` (or `CAP_DAC_READ_SEARCH`), reads every process's table in its PID
//! namespace. Names (`stat`) and cgroups (`/proc/PID/cgroup`) are world-readable either way.
//! Sockets of processes in other PID namespaces (containers) are seen when the meter runs in
//! the host's PID namespace, with host pids.

mod cache;
pub mod cgroup;
mod scan;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use ringflow_proto::pb;

pub use cgroup::{Placement, placement};

/// Who owns a socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// The thread-group id (what `ps` calls the pid).
    pub pid: u32,
    /// `comm` (at most 15 bytes; what `ps -o comm` shows).
    pub process_name: String,
    /// See [`cgroup::choose`].
    pub cgroup: String,
    pub container_id: String,
    pub pod_uid: String,
    pub systemd_unit: String,
}

impl Owner {
    /// The owner `pid` named `process_name` in `cgroup`, with what the path says parsed
    /// ([`placement`]).
    pub fn placed(pid: u32, process_name: String, cgroup: String) -> Self {
        let place = placement(&cgroup);
        Self {
            pid,
            process_name,
            cgroup,
            container_id: place.container_id,
            pod_uid: place.pod_uid,
            systemd_unit: place.systemd_unit,
        }
    }

    /// Writes the owner's fields into `record`.
    pub fn apply(&self, record: &mut pb::FlowRecord) {
        record.pid = self.pid;
        record.process_name.clone_from(&self.process_name);
        record.cgroup.clone_from(&self.cgroup);
        record.container_id.clone_from(&self.container_id);
        record.pod_uid.clone_from(&self.pod_uid);
        record.systemd_unit.clone_from(&self.systemd_unit);
    }
}

/// What the index holds and has done (counters over its whole life), for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerStats {
    /// Inodes whose owner is held.
    pub entries: usize,
    /// Inodes asked for whose owner is still being looked for.
    pub pending: usize,
    /// Entries evicted (oldest first) to stay within `max_entries`.
    pub evicted: u64,
    /// Process descriptor tables read (or attempted).
    pub processes_scanned: u64,
    /// Descriptor tables this meter may not read (another user's process, without privileges).
    pub permission_denied: u64,
    /// Inodes given up on: every process was read after they were asked for and none held
    /// them (the socket closed, or belongs to a process this meter may not read).
    pub unresolved: u64,
    /// Inodes not looked for because `max_entries` were already pending.
    pub pending_dropped: u64,
    /// `/proc` reads that failed for another reason than permissions or an exiting process.
    pub read_errors: u64,
}

/// A process as last read: when, and the owner built from it.
#[derive(Debug, Default)]
struct ProcState {
    /// The call that last read its descriptors (0: never).
    last_read: u64,
    /// Start time (identity) and the owner built for it.
    owner: Option<(u64, Arc<Owner>)>,
}

/// Socket inode → owner, learned from `/proc/*/fd`, bounded in entries and in work per call.
/// Blocking: call it where blocking is allowed (the sockets source's read runs on the blocking
/// pool).
#[derive(Debug)]
pub struct OwnerIndex {
    max_entries: usize,
    scan_budget: usize,
    proc_root: PathBuf,
    /// Calls to [`resolve`](Self::resolve) so far: the index's clock.
    tick: u64,
    owners: cache::Owners,
    /// Inode → the call that first asked for it.
    pending: HashMap<u64, u64>,
    /// By pid; only processes present at the last `/proc` listing.
    procs: HashMap<i32, ProcState>,
    stats: OwnerStats,
}

impl OwnerIndex {
    /// Processes whose descriptor tables one call reads at most, unless set otherwise.
    pub const DEFAULT_SCAN_BUDGET: usize = 256;

    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            scan_budget: Self::DEFAULT_SCAN_BUDGET,
            proc_root: PathBuf::from("/proc"),
            tick: 0,
            owners: cache::Owners::new(max_entries),
            pending: HashMap::new(),
            procs: HashMap::new(),
            stats: OwnerStats::default(),
        }
    }

    /// At most `budget` (at least 1) processes' descriptor tables are read per call.
    pub fn with_scan_budget(mut self, budget: usize) -> Self {
        self.scan_budget = budget.max(1);
        self
    }

    /// Reads processes under `root` instead of `/proc` (a host's `/proc` mounted elsewhere, or
    /// a test's fake).
    pub fn with_proc_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.proc_root = root.into();
        self
    }

    /// The owners that can be found now of `inodes` (sockets seen for the first time), and of
    /// inodes asked for in earlier calls that this call found. An inode whose owner is not
    /// found at once stays pending: later calls go on looking (each within the budget) until
    /// every process has been read since it was asked for; then it is given up and counted in
    /// [`OwnerStats::unresolved`] (the socket is gone, or its process is not readable).
    pub fn resolve(&mut self, inodes: &[u64]) -> HashMap<u64, Arc<Owner>> {
        self.tick += 1;
        let mut found = HashMap::new();
        for &inode in inodes {
            if let Some(owner) = self.owners.get(inode) {
                found.insert(inode, Arc::clone(owner));
            } else if !self.pending.contains_key(&inode) {
                if self.pending.len() >= self.max_entries {
                    self.stats.pending_dropped += 1;
                } else {
                    self.pending.insert(inode, self.tick);
                }
            }
        }
        if !self.pending.is_empty() {
            self.read_round(&mut found);
        }
        found
    }

    /// The owner held for `inode`, without reading `/proc`.
    pub fn get(&self, inode: u64) -> Option<Arc<Owner>> {
        self.owners.get(inode).cloned()
    }

    /// Drops what is held or pending for `inode` (its socket closed), making room.
    pub fn forget(&mut self, inode: u64) {
        self.owners.forget(inode);
        self.pending.remove(&inode);
    }

    pub fn stats(&self) -> OwnerStats {
        OwnerStats {
            entries: self.owners.len(),
            pending: self.pending.len(),
            ..self.stats
        }
    }

    /// One call's reading: the processes due, within the budget, until nothing is pending; then
    /// the pending inodes that every live process has been read for since are given up.
    fn read_round(&mut self, found: &mut HashMap<u64, Arc<Owner>>) {
        let pids = match scan::list_pids(&self.proc_root) {
            Ok(pids) => pids,
            Err(_) => {
                self.stats.read_errors += 1;
                return;
            }
        };
        self.procs.retain(|pid, _| pids.binary_search(pid).is_ok());
        let last_read = |pid| self.procs.get(&pid).map_or(0, |p| p.last_read);
        // A process read at or after the latest ask has nothing new for any pending inode.
        let latest_ask = self.pending.values().copied().max().unwrap_or(0);
        let candidates: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|&p| last_read(p) < latest_ask)
            .collect();
        for pid in scan::pick_due(&candidates, last_read, self.scan_budget) {
            self.read_process(pid, found);
            if self.pending.is_empty() {
                break;
            }
        }
        let oldest_read = pids
            .iter()
            .map(|pid| self.procs.get(pid).map_or(0, |p| p.last_read))
            .min()
            .unwrap_or(u64::MAX);
        let before = self.pending.len();
        self.pending.retain(|_, asked| *asked > oldest_read);
        self.stats.unresolved += (before - self.pending.len()) as u64;
    }

    /// Reads one process's descriptors; each pending inode among them gets its owner.
    fn read_process(&mut self, pid: i32, found: &mut HashMap<u64, Arc<Owner>>) {
        self.procs.entry(pid).or_default().last_read = self.tick;
        self.stats.processes_scanned += 1;
        let read = scan::open(&self.proc_root, pid).and_then(|process| {
            let hits = scan::wanted_sockets(&process, &self.pending)?;
            if hits.is_empty() {
                return Ok(None);
            }
            Ok(Some((self.owner_of(&process, pid)?, hits)))
        });
        match read {
            Ok(Some((owner, hits))) => {
                for inode in hits {
                    self.pending.remove(&inode);
                    self.stats.evicted += self.owners.insert(inode, Arc::clone(&owner));
                    found.insert(inode, Arc::clone(&owner));
                }
            }
            Ok(None) | Err(scan::Miss::Gone) => {}
            Err(scan::Miss::Denied) => self.stats.permission_denied += 1,
            Err(scan::Miss::Failed) => self.stats.read_errors += 1,
        }
    }

    /// The owner of `process` as it is now: the one built before when it is the same process
    /// (pid and start time) with the same name and cgroup, else a new one. The cgroup is read
    /// again each time: a process can move (a shell's child moved into a container's cgroup).
    fn owner_of(&mut self, process: &procfs::process::Process, pid: i32) -> Result<Arc<Owner>, scan::Miss> {
        let id = scan::identity(process)?;
        let cgroup = scan::cgroup(process);
        let state = self.procs.entry(pid).or_default();
        if let Some((start, owner)) = &state.owner
            && *start == id.start_time
            && owner.process_name == id.comm
            && owner.cgroup == cgroup
        {
            return Ok(Arc::clone(owner));
        }
        let owner = Arc::new(Owner::placed(id.tgid, id.comm, cgroup));
        state.owner = Some((id.start_time, Arc::clone(&owner)));
        Ok(owner)
    }
}

#[cfg(test)]
mod tests;
