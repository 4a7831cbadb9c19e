//! What a meter costs its host at 1,000 flows a second: CPU share of one core and resident
//! memory, with the synthetic source and with the sockets source reading real loopback
//! connections.
//!
//! Owns: the meter's configuration for each source, the loopback connections the sockets source
//! reads (each moves a few bytes every second), the measured window. Must never: decide what the
//! figures mean (the report does).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::e2e::{Programs, start_meter, stored_records};
use ringflow_tests::TestBed;
use ringflow_tests::process::CollectorProcess;
use ringflow_tests::procstat::{CpuMark, status_bytes};

/// Flows per second the meter is measured at.
pub const FLOWS_PER_SEC: u64 = 1_000;

/// The meter id of the sockets source's meter.
pub const SOCKETS_METER: &str = "meter-sockets";

/// Which of the meter's sources makes the flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Synthetic,
    Sockets,
}

/// A meter's cost over the measured window.
#[derive(Debug, Clone, Copy)]
pub struct MeterCost {
    /// Records the collector stored per second over the window (what the meter produced).
    pub flows_per_sec: f64,
    /// CPU seconds per wall-clock second (1.0: one core).
    pub cpu_share: f64,
    pub rss: u64,
    pub peak_rss: u64,
}

/// Runs a meter with `source` at [`FLOWS_PER_SEC`] to `collector`; measures `seconds` after a
/// warm-up of three seconds.
pub async fn meter_cost(
    programs: &Programs,
    bed: &TestBed,
    collector: &CollectorProcess,
    source: Source,
    seconds: u64,
) -> anyhow::Result<MeterCost> {
    let stop = CancellationToken::new();
    let (name, tables) = match source {
        Source::Synthetic => (
            "meter-synthetic",
            format!("[sources.synthetic]\nenabled = true\nrecords_per_second = {FLOWS_PER_SEC}\n"),
        ),
        Source::Sockets => {
            busy_connections(FLOWS_PER_SEC as usize, stop.clone()).await?;
            (
                SOCKETS_METER,
                "[sources.sockets]\nenabled = true\ninterval_ms = 1000\n".to_owned(),
            )
        }
    };
    let result = async {
        let meter = start_meter(programs, bed, name, collector.addr, &tables).await?;
        let pid = meter.pid();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let stored = stored_records(collector.admin_addr).await?;
        let mark = CpuMark::now(pid)?;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (cpu, wall) = mark.since()?;
        let flows = stored_records(collector.admin_addr).await? - stored;
        let cost = MeterCost {
            flows_per_sec: flows as f64 / wall,
            cpu_share: cpu / wall,
            rss: status_bytes(pid, "VmRSS")?,
            peak_rss: status_bytes(pid, "VmHWM")?,
        };
        meter.terminate().await?;
        anyhow::Ok(cost)
    }
    .await;
    stop.cancel();
    result
}

/// `n` loopback TCP connections, each moving 64 bytes each way every second until `stop`: `n`
/// flows a second for a sockets source reading every second.
async fn busy_connections(n: usize, stop: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted?;
        clients.push(client?);
        tokio::spawn(echo(server, stop.clone()));
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for client in &mut clients {
                if client.write_all(&buf).await.is_err() || client.read_exact(&mut buf).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(())
}

/// Sends back what it reads until the peer closes or `stop`.
async fn echo(mut conn: TcpStream, stop: CancellationToken) {
    let mut buf = [0u8; 256];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            n = conn.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if conn.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
