//! Who made a flow: the meter's socket-owner index (`ringflow_meter::source::owner`) against
//! this host's real `/proc`, and its bounded cost against a fake one.
//!
//! - A process in a cgroup the test creates (cgroup v2, found in `/proc/self/mountinfo`) holds
//!   a loopback TCP connection: its socket resolves to its pid, its name and that cgroup. Needs
//!   root (to create a cgroup and move a process into it): not root, the test says so and
//!   skips; root on a host with cgroup v2, any failure to set it up fails the test.
//! - This test process's own socket resolves to its pid and `comm`.
//! - Bounded cost: with a budget of N processes per call, finding an owner on a host of more
//!   processes takes several calls, each reading at most N descriptor tables, the ones read
//!   longest ago first; an inode nobody holds is given up after one full pass.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail, ensure};
use ringflow_meter::source::owner::{OwnerIndex, cgroup};
use ringflow_proto::pb;

/// The socket inode behind `/proc/PID/fd/FD`.
fn socket_inode(pid: u32, fd: i32) -> anyhow::Result<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))?;
    let text = link.to_string_lossy();
    let inode = text
        .strip_prefix("socket:[")
        .and_then(|t| t.strip_suffix(']'))
        .with_context(|| format!("fd {fd} of {pid} is {text}, not a socket"))?;
    Ok(inode.parse()?)
}

/// Resolves `inode` with calls until it is found or `max_calls` have been made.
fn resolve_within(
    index: &mut OwnerIndex,
    inode: u64,
    max_calls: usize,
) -> Option<(usize, ringflow_meter::source::owner::Owner)> {
    (1..=max_calls).find_map(|call| {
        index
            .resolve(&[inode])
            .remove(&inode)
            .map(|o| (call, (*o).clone()))
    })
}

/// A cgroup v2 directory the test made; removed when dropped (after its processes are gone).
struct TestCgroup {
    dir: PathBuf,
    /// Its path as `/proc/PID/cgroup` shows it.
    path: String,
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("could not remove test cgroup {}: {e}", self.dir.display());
        }
    }
}

/// Where cgroup v2 is mounted (its mount point and the root of the hierarchy it shows).
fn cgroup2_mount() -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    let mounts = procfs::process::Process::myself()?.mountinfo()?;
    Ok(mounts
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| (m.mount_point, m.root.into())))
}

fn make_cgroup(mount: &Path, root: &Path) -> anyhow::Result<TestCgroup> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let name = format!("ringflow-owners-{}-{nanos}", std::process::id());
    let dir = mount.join(&name);
    std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let path = root.join(&name).to_string_lossy().into_owned();
    Ok(TestCgroup { dir, path })
}

/// Kills and reaps the child when dropped (before its cgroup is removed).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> anyhow::Result<bool> {
    Ok(std::fs::metadata("/proc/self")?.uid() == 0)
}

#[test]
fn a_process_in_its_own_cgroup_is_reported_with_that_cgroup() -> anyhow::Result<()> {
    if !is_root()? {
        println!("SKIPPED: creating a cgroup and moving a process into it needs root (CI runs as root)");
        return Ok(());
    }
    let Some((mount, root)) = cgroup2_mount()? else {
        println!("SKIPPED: no cgroup v2 hierarchy is mounted on this host (/proc/self/mountinfo)");
        return Ok(());
    };
    // From here on the machine can run the test: any failure fails it.
    let group = make_cgroup(&mount, &root)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    // bash waits for a line, then connects on fd 3, says so, and holds the connection.
    let script = format!("read -r _; exec 3<>/dev/tcp/127.0.0.1/{port}; echo connected; read -r _");
    let child = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning bash (the test needs bash for /dev/tcp)")?;
    let mut child = Reaped(child);
    let pid = child.0.id();
    std::fs::write(group.dir.join("cgroup.procs"), pid.to_string())
        .with_context(|| format!("moving {pid} into {}", group.dir.display()))?;
    let mut stdin = child.0.stdin.take().context("child stdin")?;
    writeln!(stdin, "go")?;
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().context("child stdout")?).read_line(&mut line)?;
    ensure!(line.trim() == "connected", "the child did not connect: {line:?}");
    let (_server_end, peer) = listener.accept()?;

    let inode = socket_inode(pid, 3)?;
    let mut index = OwnerIndex::new(1024);
    let (_, owner) = resolve_within(&mut index, inode, 64).context("the child's socket was not resolved")?;
    assert_eq!(owner.pid, pid);
    assert_eq!(owner.process_name, "bash");
    assert_eq!(owner.cgroup, group.path, "the cgroup the test made");
    assert_eq!(
        (
            owner.container_id.as_str(),
            owner.pod_uid.as_str(),
            owner.systemd_unit.as_str()
        ),
        ("", "", ""),
        "a plain directory names no container, pod or unit"
    );
    let mut record = pb::FlowRecord::default();
    owner.apply(&mut record);
    assert_eq!((record.pid, record.cgroup.as_str()), (pid, group.path.as_str()));
    println!("child {pid} (peer {peer}) in {}: {owner:?}", group.path);
    drop(child); // the cgroup can only be removed once it is empty
    Ok(())
}

#[test]
fn this_tests_own_socket_is_owned_by_this_process() -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let inode = std::fs::metadata(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&client)
    ))?
    .ino();

    let mut index = OwnerIndex::new(1024);
    let (_, owner) =
        resolve_within(&mut index, inode, 64).context("this process's socket was not resolved")?;
    let me = procfs::process::Process::myself()?;
    let comm = me.stat()?.comm;
    assert_eq!(owner.pid, std::process::id());
    assert_eq!(owner.process_name, comm);
    // The kernel names a process after the file it executed, cut to 15 bytes.
    let exe = std::env::current_exe()?;
    let exe_name = exe.file_name().context("exe name")?.to_string_lossy();
    assert!(
        exe_name.starts_with(&comm),
        "comm {comm:?} is not the start of {exe_name:?}"
    );
    // Its cgroup is one of this process's cgroup lines, chosen as documented.
    let lines = me.cgroups()?.0;
    assert_eq!(owner.cgroup, cgroup::choose(&lines));
    assert!(
        lines.iter().any(|l| l.pathname == owner.cgroup),
        "{:?} not in {lines:?}",
        owner.cgroup
    );
    Ok(())
}

/// Writes a fake `root/PID` with `stat`, `cgroup` and `fd/` holding `sockets`.
fn fake_process(root: &Path, pid: i32, sockets: &[u64]) -> anyhow::Result<()> {
    let dir = root.join(pid.to_string());
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(dir.join("fd"))?;
    let stat = format!(
        "{pid} (p{pid}) S 1 {pid} {pid} 0 -1 4194304 101 0 0 0 0 0 0 0 20 0 1 0 {pid}00 3133440 393 \
         18446744073709551615 1 1 1 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 1 1 1 1 1 1 1 0\n"
    );
    std::fs::write(dir.join("stat"), stat)?;
    std::fs::write(dir.join("cgroup"), format!("0::/fake/{pid}\n"))?;
    std::os::unix::fs::symlink("/dev/null", dir.join("fd/0"))?;
    for (i, inode) in sockets.iter().enumerate() {
        std::os::unix::fs::symlink(format!("socket:[{inode}]"), dir.join(format!("fd/{}", i + 3)))?;
    }
    Ok(())
}

#[test]
fn a_miss_on_a_host_of_many_processes_is_read_a_budget_at_a_time() -> anyhow::Result<()> {
    const PROCESSES: i32 = 20;
    const BUDGET: usize = 4;
    let root = tempfile::tempdir()?;
    // Pids 100..=119; newer pids are read first, so pid 100's socket is found last.
    for pid in 100..100 + PROCESSES {
        let sockets: Vec<u64> = if pid == 100 {
            vec![7000]
        } else {
            vec![pid as u64 * 10]
        };
        fake_process(root.path(), pid, &sockets)?;
    }
    let mut index = OwnerIndex::new(1024)
        .with_scan_budget(BUDGET)
        .with_proc_root(root.path());

    let mut scanned = Vec::new();
    let mut found = None;
    for _ in 0..10 {
        let before = index.stats().processes_scanned;
        let got = index.resolve(&[7000]);
        scanned.push(index.stats().processes_scanned - before);
        if let Some(owner) = got.get(&7000) {
            found = Some(owner.clone());
            break;
        }
    }
    let owner = found.context("pid 100's socket was never found")?;
    assert_eq!(
        (owner.pid, owner.process_name.as_str(), owner.cgroup.as_str()),
        (100, "p100", "/fake/100")
    );
    // ⌈20 / 4⌉ = 5 calls, each reading exactly the budget.
    assert_eq!(scanned, vec![4, 4, 4, 4, 4], "tables read per call");

    // A new socket of the process read longest ago (pid 119, read in the first call) is found
    // in the next call after reading one table: it comes first.
    fake_process(root.path(), 119, &[1190, 8000])?;
    let before = index.stats().processes_scanned;
    let got = index.resolve(&[8000]);
    assert_eq!(got.get(&8000).map(|o| o.pid), Some(119));
    assert_eq!(index.stats().processes_scanned - before, 1);

    // An inode nobody holds: looked for through one full pass (5 calls of 4), then given up.
    let mut calls = 0;
    while index.stats().unresolved == 0 {
        calls += 1;
        if calls > 10 {
            bail!("9999 was never given up: {:?}", index.stats());
        }
        let before = index.stats().processes_scanned;
        assert!(index.resolve(&[9999]).is_empty());
        assert!(index.stats().processes_scanned - before <= BUDGET as u64);
    }
    assert_eq!(
        calls, 5,
        "one full pass of {PROCESSES} processes at {BUDGET} a call"
    );
    // Nothing pending: a call reads nothing.
    let before = index.stats().processes_scanned;
    index.resolve(&[]);
    assert_eq!(index.stats().processes_scanned, before);
    Ok(())
}

#[test]
fn on_this_host_every_call_stays_within_its_budget() -> anyhow::Result<()> {
    const BUDGET: usize = 8;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let inode = std::fs::metadata(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&listener)
    ))?
    .ino();
    let mut index = OwnerIndex::new(1024).with_scan_budget(BUDGET);
    let processes = std::fs::read_dir("/proc")?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        })
        .count();
    // Processes come and go meanwhile: allow a second pass.
    let max_calls = 2 * processes.div_ceil(BUDGET) + 2;
    for call in 1..=max_calls {
        let before = index.stats().processes_scanned;
        let got = index.resolve(&[inode]);
        let read = index.stats().processes_scanned - before;
        assert!(read <= BUDGET as u64, "call {call} read {read} tables");
        if let Some(owner) = got.get(&inode) {
            assert_eq!(owner.pid, std::process::id());
            println!("found after {call} calls of at most {BUDGET} ({processes} processes)");
            return Ok(());
        }
    }
    bail!(
        "not found in {max_calls} calls over {processes} processes: {:?}",
        index.stats()
    )
}
