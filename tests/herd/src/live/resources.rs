//! What each process of a live run holds, read once a second for `herd soak`'s growth checks:
//! resident memory, open descriptors and threads from `/proc`, and tasks alive (the collectors'
//! `tasks_active`, the meters' runtime).
//!
//! Owns: the `/proc` readers. Must never: fail a run because a process just exited (a reading
//! it cannot take is `None`).

use crate::timeline::Resources;

/// Open file descriptors of `pid` (entries of `/proc/PID/fd`).
fn open_fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// Threads of `pid` (`Threads:` in `/proc/PID/status`).
fn threads(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// What process `pid` holds now, with `tasks`, `sink_queue_batches` and `sessions` as its
/// metrics said.
pub fn read(pid: u32, tasks: u64, sink_queue_batches: u64, sessions: u64) -> Option<Resources> {
    Some(Resources {
        pid,
        rss_bytes: ringflow_tests::process::rss_bytes_of(pid).ok()?,
        fds: open_fds(pid)?,
        threads: threads(pid)?,
        tasks,
        sink_queue_batches,
        sessions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_holds_memory_descriptors_and_threads() {
        let me = read(std::process::id(), 7, 3, 0).expect("this process can be read");
        assert!(me.rss_bytes > 0 && me.fds >= 3 && me.threads >= 1, "{me:?}");
        assert_eq!((me.tasks, me.sink_queue_batches), (7, 3));
        assert!(read(u32::MAX, 0, 0, 0).is_none(), "no such process");
    }
}
