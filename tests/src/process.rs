//! A collector in a child process, for tests that must kill it (`kill -9`) and start it again.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::TestBed;

/// How long a child collector may take to report "collector ready".
const READY_TIMEOUT: Duration = Duration::from_secs(30);

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

pub struct CollectorProcess {
    child: Child,
    pub addr: SocketAddr,
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
        let config_path = bed.path().join(format!("{name}.toml"));
        std::fs::write(&config_path, bed.collector_toml(name, addr, extra))?;
        let mut child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("child stderr")?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let label = name.to_owned();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{label}] {line}");
                if line.contains("collector ready")
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let mut process = CollectorProcess {
            child,
            addr,
            data_dir: bed.data_dir(name),
        };
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => Ok(process),
            _ => {
                let status = process.kill();
                anyhow::bail!(
                    "collector {name} did not become ready within {READY_TIMEOUT:?} (exit: {status:?})"
                )
            }
        }
    }

    /// SIGKILL: no drain, no flush, no cleanup.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// SIGTERM, then waits for the process to exit by itself.
    pub async fn terminate(mut self) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let waiter = tokio::task::spawn_blocking(move || {
            let status = self.child.wait();
            (self, status)
        });
        let (_process, status) = waiter.await?;
        Ok(status?)
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
