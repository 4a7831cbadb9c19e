//! ringflow's test bed: fixtures that start real collectors (in-process or as child processes)
//! and real meters on loopback, wait for what they do by signal rather than by sleeping, and
//! read back what was stored. Used by the end-to-end tests in `tests/` and by the `demo` binary.
//!
//! Everything a fixture creates (certificates, tokens, data directories) lives in one temporary
//! directory that is removed when the [`TestBed`] is dropped; child processes are killed when
//! their handle is dropped.

pub mod bpf;
pub mod demo;
pub mod dns;
pub mod exporter;
pub mod kafka;
pub mod logs;
pub mod nats;
pub mod nats_cluster;
pub mod packages;
pub mod process;
pub mod procstat;
pub mod prometheus;
pub mod raw;
pub mod records;
pub mod tcp_load;
pub mod throttle;
pub mod wedge;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ringflow_collector::tls::DevCertPaths;
use ringflow_collector::{Collector, CollectorMetrics};
use ringflow_meter::config::SyntheticConfig;
use ringflow_meter::{Meter, MeterWatch};
use ringflow_proto::pb;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The org every fixture meter belongs to.
pub const ORG: &str = "testorg";
/// DNS name of the client certificate every bed's `certs` holds (`certs.clients[0]`), for mTLS.
pub const CLIENT_NAME: &str = "meter-1.testorg.example";

/// Shared material for one test (or the demo): a directory, a development CA and server
/// certificate, an org and its token, and configs built from them.
pub struct TestBed {
    root: Root,
    pub org: String,
    pub certs: DevCertPaths,
    pub token: String,
}

enum Root {
    /// Removed when the bed is dropped (tests).
    Temp(tempfile::TempDir),
    /// Left in place (the demo, so its store can be read afterwards).
    Kept(PathBuf),
}

/// The `[reconnect]` table for test meters: no splay and fast reconnects, so tests do not wait;
/// sessions count as healthy after a second. `more` adds or overrides keys of the table.
pub fn test_reconnect(more: &str) -> String {
    let mut keys: Vec<(String, String)> = [
        ("initial_delay_ms", "20"),
        ("max_delay_ms", "500"),
        ("connect_timeout_ms", "5000"),
        ("splay_ms", "0"),
        ("step_delay_ms", "20"),
        ("healthy_after_ms", "1000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for line in more.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
            match keys.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => keys.push((k, v)),
            }
        }
    }
    let body: Vec<String> = keys.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("\n[reconnect]\n{}\n", body.join("\n"))
}

const TEST_METER_EXTRA: &str = "
[batch]
max_age_ms = 50
";

impl TestBed {
    /// A bed in a new temporary directory, for org [`ORG`].
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ringflow-test-").tempdir()?;
        Self::create(Root::Temp(dir), ORG)
    }

    /// A bed in a new temporary directory under `parent` (e.g. a tmpfs for many meters' state),
    /// for org [`ORG`].
    pub fn new_in(parent: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ringflow-herd-")
            .tempdir_in(parent)?;
        Self::create(Root::Temp(dir), ORG)
    }

    /// A bed in `dir` (created if missing, never removed), for `org`.
    pub fn kept(dir: &Path, org: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Self::create(Root::Kept(dir.to_owned()), org)
    }

    fn create(root: Root, org: &str) -> anyhow::Result<Self> {
        let path = match &root {
            Root::Temp(t) => t.path().to_owned(),
            Root::Kept(p) => p.clone(),
        };
        // Valid for the fleet name too, so meters finding collectors through DNS verify them.
        let certs = ringflow_collector::tls::write_dev_certs(
            &path.join("certs"),
            &[dns::FLEET_NAME.to_owned()],
            &[CLIENT_NAME.to_owned()],
        )?;
        let token = ringflow_collector::control::auth::generate_token();
        Ok(Self {
            root,
            org: org.to_owned(),
            certs,
            token,
        })
    }

    pub fn path(&self) -> &Path {
        match &self.root {
            Root::Temp(t) => t.path(),
            Root::Kept(p) => p,
        }
    }

    /// Data directory of the collector called `name`.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.path().join(format!("{name}-data"))
    }

    /// A collector config as TOML: loopback listeners, this bed's TLS and org, a short drain
    /// window. `extra` is appended (it may add tables, not repeat `[shutdown]`).
    pub fn collector_toml(&self, name: &str, listen: SocketAddr, extra: &str) -> String {
        self.collector_toml_at(name, listen, SocketAddr::from(([127, 0, 0, 1], 0)), extra)
    }

    /// As [`collector_toml`](Self::collector_toml), with the admin server on `admin` (a fleet
    /// whose collectors poll each other's load needs one admin port on every address).
    pub fn collector_toml_at(
        &self,
        name: &str,
        listen: SocketAddr,
        admin: SocketAddr,
        extra: &str,
    ) -> String {
        format!(
            r#"collector_id = "{name}"
listen = "{listen}"
admin_listen = "{admin}"
data_dir = "{data}"

[tls]
cert = "{cert}"
key = "{key}"

[[orgs]]
id = "{org}"
token_hashes = ["{hash}"]

[shutdown]
drain_window_ms = 200
grace_ms = 5000
{extra}
"#,
            org = self.org,
            data = self.data_dir(name).display(),
            cert = self.certs.server_cert.display(),
            key = self.certs.server_key.display(),
            hash = ringflow_collector::control::auth::hash_token(&self.token),
        )
    }

    pub fn collector_config(&self, name: &str, extra: &str) -> anyhow::Result<ringflow_collector::Config> {
        let text = self.collector_toml(name, SocketAddr::from(([127, 0, 0, 1], 0)), extra);
        Ok(ringflow_collector::Config::parse(&text)?)
    }

    /// A meter config as TOML for `collectors`, with this bed's CA, org and token. `extra` is
    /// appended (tables such as `[batch]` or `[sources.synthetic]`). The host sources (sockets,
    /// interfaces) are off unless `extra` has their table: a test counts what it sent.
    pub fn meter_toml(&self, name: &str, collectors: &[SocketAddr], extra: &str) -> String {
        let host_sources_off: String = ["sockets", "interfaces"]
            .iter()
            .filter(|s| !extra.contains(&format!("[sources.{s}]")))
            .map(|s| format!("\n[sources.{s}]\nenabled = false\n"))
            .collect();
        let list: Vec<String> = collectors.iter().map(|a| format!("\"{a}\"")).collect();
        // Fleet-discovering meters verify collectors by the fleet name; static ones by localhost.
        let server_name = if collectors.is_empty() {
            dns::FLEET_NAME
        } else {
            "localhost"
        };
        format!(
            r#"meter_id = "{name}"
state_dir = "{state}"
org_id = "{org}"
org_token = "{token}"
collectors = [{list}]
server_name = "{server_name}"
ca_file = "{ca}"
admin.listen = "127.0.0.1:0"
{extra}
{host_sources_off}"#,
            org = self.org,
            state = self.path().join(format!("{name}-state")).display(),
            token = self.token,
            list = list.join(", "),
            ca = self.certs.ca.display(),
        )
    }

    /// A meter config for tests: fast reconnects, short batch ages, and the synthetic source
    /// off (tests turn it on with the rate and total they need).
    pub fn meter_config(&self, name: &str, collectors: &[SocketAddr]) -> ringflow_meter::Config {
        let text = self.meter_toml(
            name,
            collectors,
            &format!("{}{TEST_METER_EXTRA}", test_reconnect("")),
        );
        // Built here from known-good parts.
        ringflow_meter::Config::parse(&text).expect("fixture meter config is valid")
    }
    /// A test meter that finds its collectors through DNS: the fixture's fleet name, asked of
    /// `dns`, with addresses on `port`. `reconnect` adds or overrides `[reconnect]` keys.
    pub fn fleet_meter_config(
        &self,
        name: &str,
        dns: SocketAddr,
        port: u16,
        reconnect: &str,
    ) -> anyhow::Result<ringflow_meter::Config> {
        let extra = format!(
            "{}{TEST_METER_EXTRA}\n[fleet]\nname = \"{}\"\nport = {port}\nnameservers = [\"{dns}\"]\nrefresh_min_ms = 500\nresolve_timeout_ms = 500\n",
            test_reconnect(reconnect),
            dns::FLEET_NAME,
        );
        let text = self.meter_toml(name, &[], &extra);
        Ok(ringflow_meter::Config::parse(&text)?)
    }

    /// The `[fleet]` table for a collector at `advertise` in a fleet of `members`.
    pub fn collector_fleet_extra(advertise: SocketAddr, members: &[SocketAddr]) -> String {
        let list: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
        format!(
            "[fleet]\nadvertise = \"{advertise}\"\nmembers = [{}]\n",
            list.join(", ")
        )
    }

    /// Starts an in-process collector.
    pub async fn start_collector(&self, name: &str, extra: &str) -> anyhow::Result<RunningCollector> {
        RunningCollector::start(self.collector_config(name, extra)?).await
    }

    /// Starts an in-process collector listening on `listen`.
    pub async fn start_collector_at(
        &self,
        name: &str,
        listen: SocketAddr,
        extra: &str,
    ) -> anyhow::Result<RunningCollector> {
        let text = self.collector_toml(name, listen, extra);
        RunningCollector::start(ringflow_collector::Config::parse(&text)?).await
    }
}

/// A synthetic source sending `total` records (0: forever) at `rate` per second.
pub fn synthetic(rate: u64, total: u64) -> SyntheticConfig {
    SyntheticConfig {
        enabled: true,
        records_per_second: rate,
        flows: 500,
        total_records: total,
    }
}

/// A collector running in this process.
pub struct RunningCollector {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub metrics: Arc<CollectorMetrics>,
    /// The collector's data-plane runtime.
    pub data_runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningCollector {
    pub async fn start(config: ringflow_collector::Config) -> anyhow::Result<Self> {
        let data_dir = config.data_dir.clone();
        let collector = Collector::bind(config).await?;
        let shutdown = CancellationToken::new();
        Ok(Self {
            addr: collector.local_addr(),
            admin_addr: collector.admin_addr(),
            data_dir,
            metrics: collector.metrics(),
            data_runtime: collector.data_runtime(),
            shutdown: shutdown.clone(),
            task: tokio::spawn(collector.run(shutdown)),
        })
    }

    /// Graceful stop: drain, flush, wait.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Every batch stored so far (reads the segment files).
    pub fn stored(&self) -> anyhow::Result<Vec<pb::StoredBatch>> {
        Ok(ringflow_collector::data::sink::file::store::read_all(
            &self.data_dir,
            None,
        )?)
    }
}

/// Waits until `done()` holds, checking every 10 ms: for conditions in another process (or
/// counters with no change signal); fails after `timeout` with `what` in the message.
pub async fn poll_until(timeout: Duration, what: &str, done: impl AsyncFn() -> bool) -> anyhow::Result<()> {
    let wait = async {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !done().await {
            tick.tick().await;
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {timeout:?} waiting for: {what}"))
}

/// Starts a meter.
pub async fn start_meter(config: ringflow_meter::Config) -> anyhow::Result<Meter> {
    Ok(Meter::start(config, CancellationToken::new()).await?)
}

/// Records acked to all of `meters` so far.
pub fn records_acked(meters: &[Meter]) -> u64 {
    meters
        .iter()
        .map(|m| m.metrics().delivery.records_acked.get())
        .sum()
}

/// Runs `work` to completion on a runtime of its own (on this thread, out of the caller's
/// runtime): its timers and I/O go on whatever the caller's runtime, or a collector's, is doing.
pub fn on_own_runtime<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::task::block_in_place(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work)
    })
}

/// Stops `meters` (all at once) and waits for each to finish.
pub async fn stop_all(meters: Vec<Meter>) -> anyhow::Result<()> {
    let stops: Vec<_> = meters.into_iter().map(|m| tokio::spawn(m.stop())).collect();
    for s in stops {
        s.await??;
    }
    Ok(())
}

/// Waits until `done(metrics)` holds, woken by the meter's progress signal; fails after
/// `timeout` with `what` in the message.
pub async fn wait_for_meter(
    metrics: &MeterWatch,
    timeout: Duration,
    what: &str,
    done: impl Fn(&MeterWatch) -> bool,
) -> anyhow::Result<()> {
    let mut changed = metrics.changed();
    let wait = async {
        while !done(metrics) {
            if changed.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {timeout:?} waiting for: {what}"))
}

/// What a store holds, checked for duplicates.
#[derive(Debug, Default)]
pub struct StoreSummary {
    /// Distinct (meter_id, seq) batches.
    pub batches: usize,
    /// Records in distinct batches.
    pub records: u64,
    /// Batches stored more than once (resends after a failure; legal under at-least-once).
    pub duplicate_batches: usize,
    /// Sum of `bytes_from_src` over distinct batches.
    pub bytes_from_src: u64,
}

pub fn summarize(batches: &[pb::StoredBatch]) -> StoreSummary {
    let mut seen = std::collections::HashSet::new();
    let mut s = StoreSummary::default();
    for b in batches {
        if seen.insert((b.meter_id.clone(), b.seq)) {
            s.batches += 1;
            s.records += b.records.len() as u64;
            s.bytes_from_src += b.records.iter().map(|r| r.bytes_from_src).sum::<u64>();
        } else {
            s.duplicate_batches += 1;
        }
    }
    s
}

/// The value of the sample `name` (with its labels, if any, e.g. `x_total{reason="a"}`) in
/// Prometheus text; None if there is no such sample.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `GET path` on a loopback HTTP server (the admin endpoints): status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Reads the sockets source has completed so far.
fn sockets_reads(m: &ringflow_meter::MeterMetrics) -> u64 {
    ringflow_meter::MeterMetrics::source_count(&m.sources.source_reads, "sockets")
}

/// Waits (by the meter's progress signal, not by sleeping) until the sockets source has
/// completed `n` more reads of the kernel's table.
pub async fn sockets_reads_after(m: &MeterWatch, n: u64) -> anyhow::Result<()> {
    let target = sockets_reads(m) + n;
    wait_for_meter(m, Duration::from_secs(10), "sockets source reads", |m| {
        sockets_reads(m) >= target
    })
    .await
}
