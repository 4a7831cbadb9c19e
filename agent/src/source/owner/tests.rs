//! The index over a fake `/proc` in a temporary directory (the same files the kernel shows:
//! `PID/stat`, `PID/cgroup`, `PID/fd/N` links reading `socket:[INODE]`).

use std::path::Path;

use super::*;

/// Writes a fake `root/PID` whose `fd/` holds a non-socket descriptor and `sockets`.
fn fake_process(root: &Path, pid: i32, comm: &str, start: u64, cgroup: &str, sockets: &[u64]) {
    let dir = root.join(pid.to_string());
    let fd = dir.join("fd");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&fd).expect("fake proc dir");
    let stat = format!(
        "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194304 101 0 0 0 0 0 0 0 20 0 1 0 {start} 3133440 393 \
         18446744073709551615 1 1 1 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 1 1 1 1 1 1 1 0\n"
    );
    std::fs::write(dir.join("stat"), stat).expect("stat");
    std::fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).expect("cgroup");
    std::os::unix::fs::symlink("/dev/null", fd.join("0")).expect("fd 0");
    for (i, inode) in sockets.iter().enumerate() {
        std::os::unix::fs::symlink(format!("socket:[{inode}]"), fd.join((i + 3).to_string()))
            .expect("socket fd");
    }
}

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn an_inode_resolves_to_its_process_name_and_placement() {
    let root = tempfile::tempdir().expect("tempdir");
    fake_process(
        root.path(),
        10,
        "nginx",
        500,
        "/system.slice/nginx.service",
        &[1001, 1002],
    );
    fake_process(
        root.path(),
        20,
        "app",
        600,
        &format!("/system.slice/docker-{ID}.scope"),
        &[2001],
    );
    let mut index = OwnerIndex::new(100).with_proc_root(root.path());

    let got = index.resolve(&[1002, 2001, 9999]);
    let nginx = &got[&1002];
    assert_eq!(
        **nginx,
        Owner {
            pid: 10,
            process_name: "nginx".into(),
            cgroup: "/system.slice/nginx.service".into(),
            container_id: String::new(),
            pod_uid: String::new(),
            systemd_unit: "nginx.service".into(),
        }
    );
    assert_eq!(got[&2001].container_id, ID);
    assert_eq!(got.len(), 2, "9999 is nobody's: {got:?}");
    // Every process was read after 9999 was asked for: it is given up, not looked for again.
    let stats = index.stats();
    assert_eq!((stats.unresolved, stats.pending, stats.entries), (1, 0, 2));

    // A hit costs no reading.
    let scanned = index.stats().processes_scanned;
    let again = index.resolve(&[1002]);
    assert!(Arc::ptr_eq(&again[&1002], nginx));
    assert_eq!(index.stats().processes_scanned, scanned);

    // The owner is shared by the process's sockets, and kept when the same process is read again.
    let other = index.resolve(&[1001]);
    assert!(Arc::ptr_eq(&other[&1001], nginx));
}

#[test]
fn a_reused_pid_is_a_new_owner() {
    let root = tempfile::tempdir().expect("tempdir");
    fake_process(root.path(), 10, "old", 500, "/a", &[1]);
    let mut index = OwnerIndex::new(100).with_proc_root(root.path());
    assert_eq!(index.resolve(&[1])[&1].process_name, "old");

    // Same pid, same name, later start time, another cgroup: another process.
    fake_process(root.path(), 10, "old", 900, "/b", &[2]);
    let got = index.resolve(&[2]);
    assert_eq!(
        (got[&2].process_name.as_str(), got[&2].cgroup.as_str()),
        ("old", "/b")
    );
    // A process that renamed itself (prctl) is shown with its new name.
    fake_process(root.path(), 10, "renamed", 900, "/b", &[3]);
    assert_eq!(index.resolve(&[3])[&3].process_name, "renamed");
}

#[test]
fn entries_and_pending_inodes_are_bounded_and_counted() {
    let root = tempfile::tempdir().expect("tempdir");
    fake_process(root.path(), 10, "p", 1, "/", &[1, 2, 3, 4]);
    let mut index = OwnerIndex::new(2).with_proc_root(root.path());
    let got = index.resolve(&[1, 2]);
    assert_eq!(got.len(), 2);
    let got = index.resolve(&[3]);
    assert_eq!(got.len(), 1);
    let stats = index.stats();
    assert_eq!((stats.entries, stats.evicted), (2, 1));
    assert!(index.get(1).is_none(), "the oldest went first");
    assert!(index.get(3).is_some());

    // More misses at once than max_entries: the surplus is not looked for, and counted.
    let got = index.resolve(&[4, 90, 91]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(index.stats().pending_dropped, 1);
    index.forget(4);
    assert!(index.get(4).is_none());
}

#[test]
fn a_missing_proc_is_a_counted_error_not_a_failure() {
    let mut index = OwnerIndex::new(10).with_proc_root("/nonexistent/ringflow-proc");
    assert!(index.resolve(&[1]).is_empty());
    assert_eq!(index.stats().read_errors, 1);
}

#[test]
fn this_process_owns_its_own_socket() {
    use std::os::unix::fs::MetadataExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .expect("fd")
        .ino();
    let mut index = OwnerIndex::new(10);
    let got = index.resolve(&[inode]);
    let me = got.get(&inode).expect("this process's socket has an owner");
    assert_eq!(me.pid, std::process::id());
}

#[test]
fn a_pass_reads_each_process_once_and_no_more() {
    let root = tempfile::tempdir().expect("tempdir");
    for pid in 1..=10 {
        fake_process(root.path(), pid, "p", 1, "/", &[pid as u64]);
    }
    let mut index = OwnerIndex::new(100)
        .with_proc_root(root.path())
        .with_scan_budget(4);
    let mut per_call = Vec::new();
    while index.stats().unresolved == 0 {
        let before = index.stats().processes_scanned;
        assert!(index.resolve(&[999]).is_empty());
        per_call.push(index.stats().processes_scanned - before);
        assert!(per_call.len() <= 3, "{per_call:?}");
    }
    // 10 processes at 4 a call: the last call reads the 2 left, not 2 read already.
    assert_eq!(per_call, vec![4, 4, 2]);
}
