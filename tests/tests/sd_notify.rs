//! systemd's notify protocol end to end (`Type=notify`, `WatchdogSec=`): a Unix datagram socket
//! in the test's directory stands in for systemd's, named to the `collector` and `meter`
//! binaries in `NOTIFY_SOCKET`, with `WATCHDOG_USEC`.
//!
//! The collector starts with its sink (NATS) not running, so it is not ready: no `READY=1` may
//! come while `/readyz` says so (its watchdog pings, which carry its status, show it has been
//! running meanwhile). Once NATS starts, `READY=1` comes, and `/readyz` already answers 200;
//! readiness lost and regained says nothing more; SIGTERM brings `STOPPING=1`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ringflow_tests::nats::NatsServer;
use ringflow_tests::process::{ChildProcess, free_udp_addr};
use ringflow_tests::{TestBed, http_get, poll_until, test_reconnect};
use tokio::net::UnixDatagram;
use tokio::time::Instant;

const COLLECTOR_BIN: &str = env!("CARGO_BIN_EXE_collector-fixture");
const METER_BIN: &str = env!("CARGO_BIN_EXE_meter-fixture");

/// 2 s: the binaries ping every second.
const WATCHDOG_USEC: &str = "2000000";

/// The stand-in for systemd's notify socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every line received so far, in order (for failure messages).
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        Ok(NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        })
    }

    /// The environment that points a child at this socket, with a watchdog.
    fn env(&self) -> [(&'static str, &std::ffi::OsStr); 2] {
        [
            ("NOTIFY_SOCKET", self.path.as_os_str()),
            ("WATCHDOG_USEC", WATCHDOG_USEC.as_ref()),
        ]
    }

    /// The next datagram's lines, or an error if none comes by `deadline`.
    async fn next(&mut self, deadline: Instant) -> anyhow::Result<Vec<String>> {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf))
            .await
            .with_context(|| format!("no notification in time; seen so far: {:?}", self.seen))??;
        let lines: Vec<String> = String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_owned)
            .collect();
        self.seen.extend(lines.iter().cloned());
        Ok(lines)
    }

    /// Datagrams until one has the line `wanted` (returned with it), failing after `within`.
    async fn until(&mut self, wanted: &str, within: Duration) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + within;
        loop {
            let lines = self.next(deadline).await?;
            if lines.iter().any(|l| l == wanted) {
                return Ok(lines);
            }
        }
    }
}

/// The admin address the collector logged in its "collector ready" line.
fn admin_addr(process: &ChildProcess) -> anyhow::Result<SocketAddr> {
    process
        .ready_line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("admin="))
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no admin= address in {:?}", process.ready_line))
}

async fn readyz(admin: SocketAddr) -> u16 {
    http_get(admin, "/readyz").await.map_or(0, |(status, _)| status)
}

/// Reads until `count` watchdog pings with a status line starting with `status` have come,
/// failing on a `READY=1` before then (pings with another status are passed over: the socket
/// may still hold older ones).
async fn pings_without_ready(notify: &mut NotifySocket, count: usize, status: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pings = 0;
    while pings < count {
        let lines = notify.next(deadline).await?;
        anyhow::ensure!(
            !lines.iter().any(|l| l == "READY=1"),
            "READY=1 while not ready: {:?}",
            notify.seen
        );
        if lines.iter().any(|l| l == "WATCHDOG=1") && lines.iter().any(|l| l.starts_with(status)) {
            pings += 1;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_says_ready_only_once_readyz_is_200_and_stopping_on_sigterm() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let mut notify = NotifySocket::bind(bed.path())?;
    let mut nats = NatsServer::not_started(&bed.path().join("nats"))?;
    let config = bed.path().join("c1.toml");
    std::fs::write(
        &config,
        bed.collector_toml("c1", free_udp_addr()?, &nats.sink_toml("FLOWS")),
    )?;
    let args = ["run".as_ref(), "--config".as_ref(), config.as_os_str()];
    let collector = ChildProcess::start_with_env(
        COLLECTOR_BIN.as_ref(),
        &args,
        "c1",
        "collector ready",
        &notify.env(),
    )
    .await?;
    let admin = admin_addr(&collector)?;

    // Not ready (no NATS): the control plane pings the watchdog, and says nothing of READY.
    assert_eq!(readyz(admin).await, 503);
    pings_without_ready(&mut notify, 2, "STATUS=not ready: sink unavailable").await?;
    assert_eq!(readyz(admin).await, 503);
    assert!(
        notify
            .seen
            .iter()
            .all(|l| l != "READY=1" && !l.starts_with("STATUS=ready")),
        "{:?}",
        notify.seen
    );

    // NATS comes: READY=1, by which time /readyz answers 200.
    nats.restart().await?;
    let ready = notify.until("READY=1", Duration::from_secs(60)).await?;
    assert_eq!(readyz(admin).await, 200, "READY=1 before /readyz: {ready:?}");
    assert!(ready.iter().any(|l| l == "STATUS=ready: 0 sessions"), "{ready:?}");
    let ping = notify.until("WATCHDOG=1", Duration::from_secs(10)).await?;
    assert!(ping.iter().any(|l| l == "STATUS=ready: 0 sessions"), "{ping:?}");

    // Readiness lost and regained: systemd heard READY=1 once, and hears it no more.
    nats.kill();
    poll_until(Duration::from_secs(60), "not ready without NATS", async || {
        readyz(admin).await == 503
    })
    .await?;
    nats.restart().await?;
    poll_until(Duration::from_secs(60), "ready again with NATS", async || {
        readyz(admin).await == 200
    })
    .await?;
    // A second READY=1 would come as readiness returned, before the second ping that says so.
    pings_without_ready(&mut notify, 2, "STATUS=ready: 0 sessions").await?;

    // SIGTERM: the drain starts, and systemd is told.
    collector.sigterm()?;
    let stopping = notify.until("STOPPING=1", Duration::from_secs(30)).await?;
    assert!(
        stopping.iter().any(|l| l.starts_with("STATUS=draining")),
        "{stopping:?}"
    );
    let status = collector.wait(Duration::from_secs(60)).await?;
    assert!(status.success(), "{status}");
    assert_eq!(notify.seen.iter().filter(|l| *l == "READY=1").count(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meter_says_ready_once_running_and_stopping_on_sigterm() -> anyhow::Result<()> {
    let bed = TestBed::new()?;
    let mut notify = NotifySocket::bind(bed.path())?;
    let collector = bed.start_collector("c1", "").await?;
    let extra = format!(
        "[sources.synthetic]\nenabled = true\nrecords_per_second = 1000\nflows = 10\n{}",
        test_reconnect("")
    );
    let config = bed.path().join("m1.toml");
    std::fs::write(&config, bed.meter_toml("m1", &[collector.addr], &extra))?;
    let args = ["run".as_ref(), "--config".as_ref(), config.as_os_str()];
    let meter =
        ChildProcess::start_with_env(METER_BIN.as_ref(), &args, "m1", "meter started", &notify.env()).await?;

    notify.until("READY=1", Duration::from_secs(30)).await?;
    notify.until("WATCHDOG=1", Duration::from_secs(10)).await?;

    meter.sigterm()?;
    notify.until("STOPPING=1", Duration::from_secs(30)).await?;
    let status = meter.wait(Duration::from_secs(60)).await?;
    assert!(status.success(), "{status}");
    assert_eq!(notify.seen.iter().filter(|l| *l == "READY=1").count(), 1);
    collector.stop().await;
    Ok(())
}
