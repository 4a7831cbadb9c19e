//! The local demo (the README's first command): a collector and a meter in one process with
//! embedded defaults: development certificates and a token generated on the spot, the meter's
//! host sources (this machine's TCP connections and interface counters) plus a light synthetic
//! load, and a running count of what was generated, acked and stored by source, with sample
//! records read back from the collector's store the same way `collector read` does. The demo
//! keeps one TCP connection of its own busy (a small echo on loopback), so this host's flows
//! show up with the process that made them even on an idle machine.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ringflow_collector::cli::record_json;
use ringflow_collector::data::sink::file::store::OrgReader;
use ringflow_meter::Meter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{RunningCollector, TestBed};

/// The org the demo's meter sends for.
pub const ORG: &str = "demo";

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Working directory (wiped at start): certificates, configs, the collector's data.
    pub dir: PathBuf,
    /// Stop after this long; `None`: run until Ctrl-C.
    pub duration: Option<Duration>,
    /// Synthetic records per second.
    pub rate: u64,
    /// How many sample records to print every few seconds.
    pub samples: usize,
}

/// Runs the demo, printing progress to `out`, until `stop` fires or the duration is over.
pub async fn run(
    options: DemoOptions,
    stop: CancellationToken,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<DemoTotals> {
    let dir = &options.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let bed = TestBed::kept(dir, ORG)?;
    let data_dir = bed.data_dir("collector");
    let collector_toml = bed.collector_toml("collector", SocketAddr::from(([127, 0, 0, 1], 0)), "");
    std::fs::write(dir.join("collector.toml"), &collector_toml)?;
    let collector = RunningCollector::start(ringflow_collector::Config::parse(&collector_toml)?).await?;

    let meter_extra = format!(
        "[batch]\nmax_age_ms = 200\n\
         [sources.sockets]\nenabled = true\ninterval_ms = 1000\n\
         [sources.interfaces]\nenabled = true\ninterval_ms = 1000\n\
         [sources.synthetic]\nenabled = {}\nrecords_per_second = {}\nflows = 200\n",
        options.rate > 0,
        options.rate.max(1)
    );
    let meter_toml = bed.meter_toml("meter", &[collector.addr], &meter_extra);
    std::fs::write(dir.join("meter.toml"), &meter_toml)?;
    let meter = Meter::start(
        ringflow_meter::Config::parse(&meter_toml)?,
        CancellationToken::new(),
    )
    .await?;

    writeln!(out, "ringflow demo")?;
    writeln!(
        out,
        "  collector  quic://{}  (metrics: http://{}/metrics)",
        collector.addr, collector.admin_addr
    )?;
    writeln!(
        out,
        "  meter      {}  sources: this host's sockets and interfaces, synthetic {}/s{}",
        meter.id(),
        options.rate,
        meter
            .admin_addr()
            .map_or(String::new(), |a| format!("  (metrics: http://{a}/metrics)"))
    )?;
    // Stopped when the demo returns, however it ends.
    let echo_stop = stop.child_token();
    let _echo_stopped_on_return = echo_stop.clone().drop_guard();
    let echo = own_echo(echo_stop).await?;
    writeln!(
        out,
        "  echo       {echo}  (a TCP connection of the demo's own: its flows carry this process)"
    )?;
    writeln!(out, "  store      {}", data_dir.display())?;
    writeln!(
        out,
        "  configs    {}/collector.toml, {}/meter.toml",
        dir.display(),
        dir.display()
    )?;
    writeln!(
        out,
        "  stop with Ctrl-C{}",
        options
            .duration
            .map_or(String::new(), |d| format!(" (or after {}s)", d.as_secs()))
    )?;
    writeln!(out)?;

    let totals = report_until_stopped(&options, &meter, &collector, &data_dir, &stop, out).await?;
    let metrics = meter.metrics();
    meter.stop().await?;
    collector.stop().await;
    writeln!(
        out,
        "\nstopped: generated {} records, spooled {}, acked {}, stored {} (dropped at the spool's caps: {})",
        metrics.records.records_generated.get(),
        metrics.spool.spool_accepted_records.get(),
        metrics.delivery.records_acked.get(),
        count_stored(&data_dir)?,
        metrics.spool.spool_dropped_records.get()
    )?;
    writeln!(
        out,
        "read them:  cargo run -p ringflow-collector -- read --data-dir {} --org {ORG} | head",
        data_dir.display()
    )?;
    Ok(totals)
}

/// Counts and samples, once a second.
#[derive(Debug, Default, Clone, Copy)]
pub struct DemoTotals {
    pub acked: u64,
    pub read_back: u64,
    /// Records read back from the host sources: sockets and interfaces.
    pub sockets: u64,
    pub interfaces: u64,
    /// Socket records that name the process that made the flow.
    pub with_process: u64,
}

/// A loopback TCP echo inside this process, with a client that sends a little every 200 ms
/// until `stop`: a flow of the demo's own for the sockets source to find with its owner.
async fn own_echo(stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let server_stop = stop.clone();
    tokio::spawn(async move {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 1024];
        loop {
            let n = tokio::select! {
                _ = server_stop.cancelled() => return,
                n = conn.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
            };
            if conn.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut client = tokio::net::TcpStream::connect(addr).await?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let (ping, mut pong) = ([b'.'; 512], [0u8; 512]);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if client.write_all(&ping).await.is_err() || client.read_exact(&mut pong).await.is_err() {
                return;
            }
        }
    });
    Ok(addr)
}

/// Sample records to print: the host's own flows first (those that name their process before
/// the others), then synthetic ones.
fn samples(batches: &[ringflow_proto::pb::StoredBatch], n: usize) -> Vec<String> {
    use ringflow_proto::pb::SourceKind;
    let all = || {
        batches
            .iter()
            .rev()
            .flat_map(|b| b.records.iter().map(move |r| (b, r)))
    };
    let host = |r: &ringflow_proto::pb::FlowRecord| r.source != SourceKind::Synthetic as i32;
    let named = all().filter(|(_, r)| host(r) && r.pid != 0);
    let unnamed = all().filter(|(_, r)| host(r) && r.pid == 0);
    let synthetic = all().filter(|(_, r)| !host(r));
    named
        .chain(unnamed)
        .chain(synthetic)
        .take(n)
        .map(|(b, r)| record_json(b, r))
        .collect()
}

async fn report_until_stopped(
    options: &DemoOptions,
    meter: &Meter,
    collector: &RunningCollector,
    data_dir: &Path,
    stop: &CancellationToken,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<DemoTotals> {
    let started = Instant::now();
    let until = options.duration.map(|d| started + d);
    let metrics = meter.metrics();
    let mut reader = OrgReader::new(data_dir, ORG);
    let mut batches = Vec::new();
    let mut totals = DemoTotals::default();
    let mut last_acked = 0;
    let mut tick = tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = async { match until { Some(u) => tokio::time::sleep_until(u).await, None => std::future::pending().await } } => break,
            _ = tick.tick() => {}
        }
        batches.clear();
        reader.read_available(&mut batches)?;
        for r in batches.iter().flat_map(|b| &b.records) {
            totals.read_back += 1;
            match ringflow_proto::pb::SourceKind::try_from(r.source) {
                Ok(ringflow_proto::pb::SourceKind::Socket | ringflow_proto::pb::SourceKind::SocketBpf) => {
                    totals.sockets += 1;
                    totals.with_process += u64::from(r.pid != 0);
                }
                Ok(ringflow_proto::pb::SourceKind::Interface) => totals.interfaces += 1,
                _ => {}
            }
        }
        totals.acked = metrics.delivery.records_acked.get();
        let secs = started.elapsed().as_secs();
        writeln!(
            out,
            "[{secs:>4}s] generated {:>9}  acked {:>9}  stored {:>9}  ({:>6}/s)  from this host: sockets {:>6}  interfaces {:>6}",
            metrics.records.records_generated.get(),
            totals.acked,
            collector.metrics.output.records_stored.get(),
            totals.acked - last_acked,
            totals.sockets,
            totals.interfaces,
        )?;
        last_acked = totals.acked;
        if secs % 5 == 2 {
            for line in samples(&batches, options.samples) {
                writeln!(out, "        {line}")?;
            }
        }
    }
    Ok(totals)
}

fn count_stored(data_dir: &Path) -> anyhow::Result<u64> {
    Ok(
        ringflow_collector::data::sink::file::store::read_all(data_dir, Some(ORG))?
            .iter()
            .map(|b| b.records.len() as u64)
            .sum(),
    )
}
