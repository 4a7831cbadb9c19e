//! A real `nats-server -js` for tests: on a free loopback port, with its own store directory,
//! killed when the fixture is dropped. It can be killed (SIGKILL) and started again on the same
//! port and store, which is how sink outages are tested. Also: meters that send a known number
//! of records, and the check that a stream holds each of their batches exactly once.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ringflow_collector::data::sink::nats::NatsSinkConfig;
use ringflow_collector::data::sink::nats::consume::{StreamedBatch, read_stream};

use ringflow_meter::Meter;
use ringflow_meter::source::synthetic::bytes_from_src;
use ringflow_proto::pb;

use crate::process::ChildProcess;
use crate::{ORG, TestBed, start_meter, synthetic, wait_for_meter};

/// Where `nats-server` is looked for besides `$PATH` (Debian installs it in /usr/sbin).
const SEARCH_DIRS: [&str; 3] = ["/usr/sbin", "/usr/bin", "/usr/local/bin"];

/// The `nats-server` binary: `$RINGFLOW_NATS_SERVER`, else `$PATH`, else the usual directories.
pub fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("RINGFLOW_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(SEARCH_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .context(
            "nats-server not found (tests/run-all.sh installs it with `apt-get install -y nats-server`; \
             or set RINGFLOW_NATS_SERVER to its path)",
        )
}

/// A running `nats-server` with JetStream.
pub struct NatsServer {
    binary: PathBuf,
    process: Option<ChildProcess>,
    pub port: u16,
    store: PathBuf,
    /// Extra command-line options (e.g. `--auth TOKEN`).
    options: Vec<String>,
    /// The server's log goes here (None: the test's output, prefixed).
    log: Option<PathBuf>,
}

impl NatsServer {
    /// Starts a server on a free loopback port, storing JetStream data under `store`.
    pub async fn start(store: &Path) -> anyhow::Result<Self> {
        Self::start_with(store, &[]).await
    }

    /// Like [`start`](Self::start), with the server's log written to `log` instead of the
    /// output (`herd bench`).
    pub async fn start_logged(store: &Path, log: &Path) -> anyhow::Result<Self> {
        let mut server = Self::not_started(store)?;
        server.log = Some(log.to_owned());
        server.restart().await?;
        Ok(server)
    }

    /// Like [`start`](Self::start), with extra `nats-server` options (kept for restarts).
    pub async fn start_with(store: &Path, options: &[&str]) -> anyhow::Result<Self> {
        let mut server = Self::not_started(store)?;
        server.options = options.iter().map(|o| o.to_string()).collect();
        server.restart().await?;
        Ok(server)
    }

    /// A server with a port and a store, not running yet ([`restart`](Self::restart) starts it):
    /// for a collector that starts before its NATS does.
    pub fn not_started(store: &Path) -> anyhow::Result<Self> {
        Ok(NatsServer {
            binary: nats_server_binary()?,
            process: None,
            port: TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
            store: store.to_owned(),
            options: Vec::new(),
            log: None,
        })
    }

    /// Replaces the extra command-line options (kept for restarts).
    pub fn set_options(&mut self, options: &[String]) {
        self.options = options.to_vec();
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no flush, no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the server (again) on the same port and store; returns once it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let port = self.port.to_string();
        let store = self.store.clone();
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "-js".as_ref(),
            "-a".as_ref(),
            "127.0.0.1".as_ref(),
            "-p".as_ref(),
            port.as_ref(),
            "-sd".as_ref(),
            store.as_os_str(),
        ];
        args.extend(self.options.iter().map(std::ffi::OsStr::new));
        let label = format!("nats:{}", self.port);
        self.process = Some(
            ChildProcess::start_logged(
                &self.binary,
                &args,
                &label,
                "Server is ready",
                self.log.as_deref(),
            )
            .await?,
        );
        Ok(())
    }

    /// The `[sink]` tables that point a collector at this server and `stream`.
    pub fn sink_toml(&self, stream: &str) -> String {
        format!(
            "[sink]\nkind = \"nats\"\n[sink.nats]\nservers = [\"{}\"]\nstream = \"{stream}\"\nconnect_timeout_ms = 2000\npublish_timeout_ms = 2000\n",
            self.url()
        )
    }

    /// A sink config for reading `stream` back.
    pub fn sink_config(&self, stream: &str) -> NatsSinkConfig {
        NatsSinkConfig {
            servers: vec![self.url()],
            stream: stream.to_owned(),
            ..NatsSinkConfig::default()
        }
    }

    /// Every message of `stream`, oldest first.
    pub async fn read_all(&self, stream: &str) -> anyhow::Result<Vec<StreamedBatch>> {
        read_all_with(&self.sink_config(stream)).await
    }
}

/// Every message of the stream `config` names (with its credentials and CA), oldest first.
pub async fn read_all_with(config: &NatsSinkConfig) -> anyhow::Result<Vec<StreamedBatch>> {
    let mut all = Vec::new();
    let read = read_stream(config, None, false, |m| {
        all.push(m);
        std::ops::ControlFlow::Continue(())
    });
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .context("reading the stream took over 60 s")??;
    Ok(all)
}

/// Starts `count` meters named m0, m1, ... each sending `total` records at `rate`/s to
/// `collectors` (each meter's ring picks one).
pub async fn start_meters(
    bed: &TestBed,
    collectors: &[SocketAddr],
    count: usize,
    rate: u64,
    total: u64,
) -> anyhow::Result<Vec<Meter>> {
    let mut meters = Vec::new();
    for i in 0..count {
        meters.push(start_meter_numbered(bed, i, collectors, rate, total).await?);
    }
    Ok(meters)
}

/// Meter `m{i}`, sending `total` records at `rate`/s to `collectors`.
pub async fn start_meter_numbered(
    bed: &TestBed,
    i: usize,
    collectors: &[SocketAddr],
    rate: u64,
    total: u64,
) -> anyhow::Result<Meter> {
    let mut config = bed.meter_config(&format!("m{i}"), collectors);
    config.sources.synthetic = synthetic(rate, total);
    start_meter(config).await
}

pub async fn wait_all_acked(meters: &[Meter], total: u64, within: Duration) -> anyhow::Result<()> {
    for (i, meter) in meters.iter().enumerate() {
        wait_for_meter(
            &meter.metrics(),
            within,
            &format!("m{i}: all records acked"),
            |m| m.delivery.records_acked.get() >= total,
        )
        .await?;
    }
    Ok(())
}

/// Checks that the stream holds each meter's batches exactly once, intact: every message is a
/// ringflow batch of our org whose `Nats-Msg-Id` names it; no (meter, seq) twice; each meter's
/// records are exactly the `total` it generated (by count and content); and the number of
/// batches is the number each meter built.
pub fn assert_exactly_once(messages: &[StreamedBatch], meters: &[Meter], total: u64) {
    let mut seen: HashMap<(String, u64), u64> = HashMap::new();
    let mut per_meter: HashMap<String, (u64, u64)> = HashMap::new();
    for m in messages {
        let batch: &pb::StoredBatch = m.batch.as_ref().expect("every message decodes");
        assert_eq!(batch.org_id, ORG, "stored under the authenticated org");
        assert_eq!(m.subject, format!("ringflow.flows.{ORG}"));
        assert_eq!(
            m.message_id.as_deref(),
            Some(format!("{ORG}:{}:{}", batch.meter_id, batch.seq).as_str()),
            "Nats-Msg-Id is ORG:METER_ID:SEQ"
        );
        if let Some(first) = seen.insert((batch.meter_id.clone(), batch.seq), m.stream_seq) {
            panic!(
                "batch {}:{} stored twice (stream seqs {first} and {})",
                batch.meter_id, batch.seq, m.stream_seq
            );
        }
        let e = per_meter.entry(batch.meter_id.clone()).or_default();
        e.0 += batch.records.len() as u64;
        e.1 += batch.records.iter().map(|r| r.bytes_from_src).sum::<u64>();
    }
    let expected_bytes: u64 = (0..total).map(bytes_from_src).sum();
    for (i, meter) in meters.iter().enumerate() {
        let name = format!("m{i}");
        assert_eq!(
            per_meter.get(&name).copied(),
            Some((total, expected_bytes)),
            "{name}: records and their contents in the stream"
        );
        let built = meter.metrics().records.batches_built.get();
        let stored = seen.keys().filter(|(id, _)| *id == name).count() as u64;
        assert_eq!(stored, built, "{name}: batches in the stream = batches built");
    }
}
