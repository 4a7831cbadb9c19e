//! Collectors and meters in child processes, for tests that must kill them (`kill -9`) and start
//! them again.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::TestBed;

/// How long a child collector may take to report "collector ready".
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Resident memory of process `pid` now (`VmRSS` in `/proc/PID/status`).
pub fn rss_bytes_of(pid: u32) -> anyhow::Result<u64> {
    crate::procstat::status_bytes(pid, "VmRSS")
}

/// A loopback UDP address that was free a moment ago (for a collector that must come back on
/// the same port after a restart).
pub fn free_udp_addr() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// A UDP port free on every one of `ips` a moment ago: a fleet on 127.0.0.2, 127.0.0.3, ...
/// listens on the same port, as a real fleet behind one DNS name does.
pub fn free_udp_port_on(ips: &[std::net::Ipv4Addr]) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let first = UdpSocket::bind((ips[0], 0))?;
        let port = first.local_addr()?.port();
        let others: Result<Vec<_>, _> = ips[1..].iter().map(|ip| UdpSocket::bind((*ip, port))).collect();
        if others.is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no UDP port free on all of {ips:?}")
}

/// A TCP port free on every one of `ips` a moment ago: the admin port of a fleet whose
/// collectors poll each other's load (`fleet.load_admin_port`).
pub fn free_tcp_port_on(ips: &[std::net::Ipv4Addr]) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind((ips[0], 0))?;
        let port = first.local_addr()?.port();
        let others: Result<Vec<_>, _> = ips[1..]
            .iter()
            .map(|ip| std::net::TcpListener::bind((*ip, port)))
            .collect();
        if others.is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no TCP port free on all of {ips:?}")
}

/// A child process whose stderr is copied to the test's output (each line prefixed with its
/// label), and which is killed if the test drops it still running.
pub struct ChildProcess {
    child: Child,
    label: String,
    /// The log line that said the process was ready.
    pub ready_line: String,
}

impl ChildProcess {
    /// Starts `binary` with `args`, and returns once it has logged a line containing `ready`
    /// (within [`READY_TIMEOUT`]).
    pub async fn start(
        binary: &Path,
        args: &[&std::ffi::OsStr],
        label: &str,
        ready: &str,
    ) -> anyhow::Result<Self> {
        Self::start_logged(binary, args, label, ready, None).await
    }

    /// As [`start`](Self::start), writing the child's stderr to `log` (appending) instead of the
    /// test's output when given.
    pub async fn start_logged(
        binary: &Path,
        args: &[&std::ffi::OsStr],
        label: &str,
        ready: &str,
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        Self::start_filtered(binary, args, label, ready, log, "info").await
    }

    /// As [`start_logged`](Self::start_logged), with `RUST_LOG` set to `filter`.
    pub async fn start_filtered(
        binary: &Path,
        args: &[&std::ffi::OsStr],
        label: &str,
        ready: &str,
        log: Option<&Path>,
        filter: &str,
    ) -> anyhow::Result<Self> {
        Self::start_env(binary, args, (label, ready), (log, filter), &[]).await
    }

    /// As [`start`](Self::start), with the variables `env` added to the child's environment
    /// (e.g. `NOTIFY_SOCKET` for a process that notifies systemd).
    pub async fn start_with_env(
        binary: &Path,
        args: &[&std::ffi::OsStr],
        label: &str,
        ready: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<Self> {
        Self::start_env(binary, args, (label, ready), (None, "info"), env).await
    }

    async fn start_env(
        binary: &Path,
        args: &[&std::ffi::OsStr],
        (label, ready): (&str, &str),
        (log, filter): (Option<&Path>, &str),
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<Self> {
        let mut log = match log {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
            None => None,
        };
        let mut child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("child stderr")?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (prefix, wanted) = (label.to_owned(), ready.to_owned());
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match log.as_mut() {
                    Some(file) => {
                        use std::io::Write;
                        let _ = writeln!(file, "{line}");
                    }
                    None => eprintln!("[{prefix}] {line}"),
                }
                if line.contains(&wanted)
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(line.clone());
                }
            }
        });
        let mut process = ChildProcess {
            child,
            label: label.to_owned(),
            ready_line: String::new(),
        };
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(line)) => {
                process.ready_line = line;
                Ok(process)
            }
            _ => {
                let status = process.kill();
                anyhow::bail!("{label} did not log {ready:?} within {READY_TIMEOUT:?} (exit: {status:?})")
            }
        }
    }

    /// SIGKILL: no drain, no flush, no cleanup.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory of the process now (`VmRSS` in `/proc/PID/status`).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_bytes_of(self.child.id())
    }

    /// SIGTERM, then waits for the process to exit by itself.
    pub async fn terminate(self) -> anyhow::Result<ExitStatus> {
        self.sigterm()?;
        self.wait(Duration::from_secs(3600)).await
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn sigterm(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.label);
        Ok(())
    }

    /// Waits until the process exits by itself, killing it (and failing) after `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = self.child.id().to_string();
        let mut waiter = tokio::task::spawn_blocking(move || {
            let status = self.child.wait();
            (self, status)
        });
        match tokio::time::timeout(timeout, &mut waiter).await {
            Ok(joined) => {
                let (_process, status) = joined?;
                Ok(status?)
            }
            Err(_) => {
                // The child is inside the waiter: kill it by pid, and let the waiter reap it.
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                let _ = waiter.await;
                anyhow::bail!("still running after {timeout:?} (killed)")
            }
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How to run the `collector` command line.
#[derive(Debug, Clone)]
pub struct CollectorCommand {
    /// The binary: `collector`, or one that embeds its command line.
    pub binary: PathBuf,
    /// Arguments before the collector's own (`herd` runs itself as `herd collector run ...`).
    pub leading_args: Vec<std::ffi::OsString>,
    /// Each collector's stderr goes to `DIR/NAME.log` (None: the test's output, prefixed).
    pub log_dir: Option<PathBuf>,
}

/// The `collector` command line in a child process.
pub struct CollectorProcess {
    pub process: ChildProcess,
    pub addr: SocketAddr,
    /// The admin HTTP address, as the collector logged it when ready.
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl CollectorProcess {
    /// Starts `binary` (the `collector` command line) with a config from `bed` on `addr`, and
    /// returns once it has logged that it is ready.
    pub async fn start(
        binary: &Path,
        bed: &TestBed,
        name: &str,
        addr: SocketAddr,
        extra: &str,
    ) -> anyhow::Result<Self> {
        let command = CollectorCommand {
            binary: binary.to_owned(),
            leading_args: Vec::new(),
            log_dir: None,
        };
        Self::start_with(&command, bed, name, addr, extra).await
    }

    /// As [`start`](Self::start), with the command line `command` describes.
    pub async fn start_with(
        command: &CollectorCommand,
        bed: &TestBed,
        name: &str,
        addr: SocketAddr,
        extra: &str,
    ) -> anyhow::Result<Self> {
        Self::start_at(
            command,
            bed,
            name,
            (addr, SocketAddr::from(([127, 0, 0, 1], 0))),
            extra,
        )
        .await
    }

    /// As [`start_with`](Self::start_with), listening on `(quic, admin)`.
    pub async fn start_at(
        command: &CollectorCommand,
        bed: &TestBed,
        name: &str,
        (addr, admin): (SocketAddr, SocketAddr),
        extra: &str,
    ) -> anyhow::Result<Self> {
        let config_path = bed.path().join(format!("{name}.toml"));
        std::fs::write(&config_path, bed.collector_toml_at(name, addr, admin, extra))?;
        let mut args: Vec<&std::ffi::OsStr> = command.leading_args.iter().map(|a| a.as_os_str()).collect();
        args.extend(["run".as_ref(), "--config".as_ref(), config_path.as_os_str()]);
        let log = command.log_dir.as_ref().map(|d| d.join(format!("{name}.log")));
        let process =
            ChildProcess::start_logged(&command.binary, &args, name, "collector ready", log.as_deref())
                .await?;
        let admin_addr = process
            .ready_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("admin="))
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no admin= address in {:?}", process.ready_line))?;
        Ok(CollectorProcess {
            process,
            addr,
            admin_addr,
            data_dir: bed.data_dir(name),
        })
    }

    /// SIGKILL: no drain, no flush, no cleanup.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.process.kill()
    }

    /// SIGTERM, then waits for the process to exit by itself.
    pub async fn terminate(self) -> anyhow::Result<ExitStatus> {
        self.process.terminate().await
    }
}

/// Starts `binary` (the `meter` command line) with the config file at `config`, and returns
/// once it has logged that it started.
pub async fn start_meter_process(binary: &Path, config: &Path, label: &str) -> anyhow::Result<ChildProcess> {
    let args = ["run".as_ref(), "--config".as_ref(), config.as_os_str()];
    ChildProcess::start(binary, &args, label, "meter started").await
}

/// Runs `cmd` to its end with its output captured, in a process group of its own: if it outlives
/// `limit`, the whole group (its own children too) is killed and that is an error.
pub async fn run_bounded(
    mut cmd: std::process::Command,
    limit: Duration,
) -> anyhow::Result<std::process::Output> {
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let what = format!("{:?}", cmd.get_program());
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let group = child.id().map(|pid| format!("-{pid}"));
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => Ok(output?),
        Err(_) => {
            if let Some(group) = group {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &group])
                    .status();
            }
            anyhow::bail!("{what} did not stop by itself within {limit:?}")
        }
    }
}
