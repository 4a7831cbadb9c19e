//! Reading `/proc` for owners, through the `procfs` crate: the list of processes, one process's
//! socket descriptors, its identity (`stat`: start time and `comm`) and its cgroup lines; and the
//! sans-IO choice of which processes to read next.
//!
//! Owns: the calls into `/proc` and how their errors are classified (denied, gone, failed). Must
//! never: log (the index counts), or read more than it is asked to.

use std::collections::HashMap;
use std::path::Path;

use procfs::ProcError;
use procfs::process::{FDTarget, Process};

/// Why a process could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Miss {
    /// Not this user's process, and no `CAP_SYS_PTRACE`/`CAP_DAC_READ_SEARCH`.
    Denied,
    /// It exited while being read.
    Gone,
    /// Anything else (an unexpected `/proc` format, an I/O error).
    Failed,
}

impl From<&ProcError> for Miss {
    fn from(e: &ProcError) -> Self {
        match e {
            ProcError::PermissionDenied(_) => Miss::Denied,
            ProcError::NotFound(_) => Miss::Gone,
            ProcError::Io(io, _) if io.raw_os_error() == Some(ESRCH) => Miss::Gone,
            _ => Miss::Failed,
        }
    }
}

/// ESRCH (3 on every Linux architecture): reading a file of a process that has just exited.
const ESRCH: i32 = 3;

/// The thread-group ids in `root` (`/proc`), ascending. A plain directory listing: the only
/// thing read is each entry's name, and opening every process (as `procfs`'s iterator does)
/// would cost a system call per process per call for nothing.
pub(super) fn list_pids(root: &Path) -> std::io::Result<Vec<i32>> {
    let mut pids: Vec<i32> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// Opens `root/PID`. Later reads go through the directory opened here, so they are of this
/// process even if the pid is reused meanwhile (they fail instead).
pub(super) fn open(root: &Path, pid: i32) -> Result<Process, Miss> {
    Process::new_with_root(root.join(pid.to_string())).map_err(|e| Miss::from(&e))
}

/// The inodes of `process`'s sockets that `wanted` holds.
pub(super) fn wanted_sockets<V>(process: &Process, wanted: &HashMap<u64, V>) -> Result<Vec<u64>, Miss> {
    let fds = process.fd().map_err(|e| Miss::from(&e))?;
    Ok(fds
        .filter_map(|fd| match fd.ok()?.target {
            FDTarget::Socket(inode) if wanted.contains_key(&inode) => Some(inode),
            _ => None,
        })
        .collect())
}

/// What identifies a process and names it: its start time (clock ticks after boot; with the pid
/// it tells a reused pid apart), its thread-group id and its `comm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    pub start_time: u64,
    pub tgid: u32,
    pub comm: String,
}

pub(super) fn identity(process: &Process) -> Result<Identity, Miss> {
    let stat = process.stat().map_err(|e| Miss::from(&e))?;
    Ok(Identity {
        start_time: stat.starttime,
        tgid: u32::try_from(stat.pid).unwrap_or_default(),
        comm: stat.comm,
    })
}

/// The process's cgroup path (see [`super::cgroup::choose`]); empty when it cannot be read.
pub(super) fn cgroup(process: &Process) -> String {
    process
        .cgroups()
        .map(|g| super::cgroup::choose(&g.0))
        .unwrap_or_default()
}

/// Sans-IO: which of `pids` to read in this call, at most `budget` of them: those read longest
/// ago first (never read counts as longest), newest pid first among equals (a new process is
/// the likeliest owner of a new socket).
pub(super) fn pick_due(pids: &[i32], last_read: impl Fn(i32) -> u64, budget: usize) -> Vec<i32> {
    let mut order: Vec<(u64, std::cmp::Reverse<i32>)> = pids
        .iter()
        .map(|&p| (last_read(p), std::cmp::Reverse(p)))
        .collect();
    if budget < order.len() {
        order.select_nth_unstable(budget);
        order.truncate(budget);
    }
    order.sort_unstable();
    order.into_iter().map(|(_, p)| p.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_read_longest_ago_come_first_within_the_budget() {
        let last: HashMap<i32, u64> = [(1, 5), (2, 3), (7, 3), (9, 9)].into();
        let at = |p: i32| last.get(&p).copied().unwrap_or(0);
        // 4 and 8 were never read: they come first, the newer pid first.
        let pids = [1, 2, 4, 7, 8, 9];
        assert_eq!(pick_due(&pids, at, 3), vec![8, 4, 7]);
        assert_eq!(pick_due(&pids, at, 100), vec![8, 4, 7, 2, 1, 9]);
        assert!(pick_due(&pids, at, 0).is_empty());
    }

    #[test]
    fn a_sweep_visits_every_process_once_before_any_twice() {
        let pids: Vec<i32> = (1..=10).collect();
        let mut last: HashMap<i32, u64> = HashMap::new();
        let mut seen = Vec::new();
        for tick in 1..=4u64 {
            let due = pick_due(&pids, |p| last.get(&p).copied().unwrap_or(0), 3);
            assert_eq!(due.len(), 3);
            for p in due {
                last.insert(p, tick);
                seen.push(p);
            }
        }
        let first_sweep: std::collections::HashSet<i32> = seen[..10].iter().copied().collect();
        assert_eq!(first_sweep.len(), 10, "the first 10 reads cover all 10: {seen:?}");
    }
}
