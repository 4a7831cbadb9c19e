//! `herd bench`: ringflow beside its ceilings, measured in one run on one machine, because these
//! machines are noisy and a figure means little without the ceiling measured next to it.
//!
//! Modules: `bulk` (the workload in either form, raw quinn bulk, the windowed ringflow sender),
//! `e2e` (meter and collector processes, the direct JetStream publisher), `nfcapd` (NetFlow v5
//! into nfcapd), `wire` (real batches framed in each form), `sessions` (session rate, idle
//! sessions), `hold` (the CPU and memory of idle and lightly loaded sessions beside raw quinn's),
//! `meter_cost` (a meter's CPU and memory at 1,000 flows/s), `pieces` (codec, judge, file sink),
//! `report` (bench.json, the table, the targets). This module runs them in order.

pub mod bulk;
pub mod e2e;
pub mod hold;
pub mod meter_cost;
pub mod nfcapd;
pub mod pieces;
pub mod report;
pub mod sessions;
pub mod wire;

use std::path::PathBuf;
use std::time::Duration;

use ringflow_collector::data::sink::file::FileSinkConfig;

use self::bulk::{Form, Transfer, raw_quinn_bulk, raw_quinn_server, ringflow_ingest, workload};
use self::e2e::{
    Programs, jetstream_context, jetstream_direct, jetstream_messages, meter_to_collector, nats_sink_config,
    nats_sink_toml, with_cpu,
};
use self::meter_cost::{Source, meter_cost};
use self::report::{BenchReport, Section};
use ringflow_tests::nats::NatsServer;
use ringflow_tests::{ORG, TestBed};

/// The parts of a bench run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Meter → collector → file sink, and pre-encoded batches → collector → file sink, as rows
    /// and as columns, beside raw quinn bulk transfer of the row form's bytes, and nfcapd taking
    /// the same records as NetFlow v5.
    File,
    /// Meter → collector → JetStream, and pre-encoded batches → collector → JetStream, as rows
    /// and as columns, beside a direct async publish of the row form's batches.
    Jetstream,
    /// New sessions per second beside raw quinn handshakes.
    Sessions,
    /// Collector memory per idle session.
    Idle,
    /// Collector CPU per idle session-second, per small batch, and memory per idle session,
    /// beside raw quinn holding as many connections.
    Hold,
    /// The meter's CPU and memory at 1,000 flows/s (synthetic and sockets sources).
    Meter,
    /// Codec, frame judge and file sink on their own.
    Pieces,
}

/// How big each part is.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Records per throughput run.
    pub records: u64,
    /// Runs of each throughput measurement (interleaved with its ceiling; medians reported).
    pub repeat: usize,
    /// Sessions per session-rate run, and how many at once.
    pub sessions: usize,
    pub session_concurrency: usize,
    /// Idle sessions held.
    pub idle_sessions: usize,
    /// Sessions the hold holds on each side (ringflow and raw quinn).
    pub hold_sessions: usize,
    /// The hold's measured windows (the idle one rounded up to whole keep-alive periods), and
    /// the warm-up before each.
    pub hold_window: Duration,
    pub hold_warm_up: Duration,
    /// Seconds each meter is measured (after 3 s of warm-up).
    pub meter_seconds: u64,
    /// Time each codec loop runs.
    pub codec_budget: Duration,
    /// The throughput collectors' `limits.max_unacked_batches` (None: the collector's default).
    pub max_unacked: Option<u32>,
}

impl Sizes {
    /// The sizes docs/benchmarks.md reports.
    pub fn full() -> Self {
        Self {
            records: 3_000_000,
            repeat: 3,
            sessions: 3_000,
            session_concurrency: 64,
            idle_sessions: 10_000,
            hold_sessions: 5_000,
            hold_window: Duration::from_secs(15),
            hold_warm_up: Duration::from_secs(5),
            meter_seconds: 20,
            codec_budget: Duration::from_secs(2),
            max_unacked: None,
        }
    }

    /// A run of every part in well under a minute: checks that each works, figures are rough.
    pub fn quick() -> Self {
        Self {
            records: 100_000,
            repeat: 1,
            sessions: 200,
            session_concurrency: 16,
            idle_sessions: 500,
            hold_sessions: 300,
            hold_window: Duration::from_secs(3),
            hold_warm_up: Duration::from_secs(1),
            meter_seconds: 2,
            codec_budget: Duration::from_millis(200),
            max_unacked: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub parts: Vec<Part>,
    pub sizes: Sizes,
    pub quick: bool,
    pub programs: Programs,
    /// Where state goes (collector data, meter spools, NATS store): a real disk, as in production.
    pub work_parent: PathBuf,
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// Runs the parts asked for; the report is also written to `out` (bench.json, bench.md).
pub async fn run(options: BenchOptions) -> anyhow::Result<BenchReport> {
    let mut report = BenchReport::new(&options);
    let bed = TestBed::new_in(&options.work_parent)?;
    let sizes = &options.sizes;
    let wants = |p: Part| options.parts.contains(&p);
    if wants(Part::File) || wants(Part::Jetstream) {
        let work = Works {
            rows: workload(sizes.records, Form::Rows),
            columns: workload(sizes.records, Form::Columns),
        };
        if wants(Part::File) {
            eprintln!(
                "herd bench: file sink end to end beside raw quinn ({} runs)",
                sizes.repeat
            );
            file_part(&options, &bed, &work, &mut report).await?;
        }
        if wants(Part::Jetstream) {
            eprintln!(
                "herd bench: JetStream end to end beside direct publishes ({} runs)",
                sizes.repeat
            );
            jetstream_part(&options, &bed, &work, &mut report).await?;
        }
    }
    if wants(Part::Sessions) || wants(Part::Idle) {
        eprintln!("herd bench: sessions");
        sessions_part(&options, &bed, &mut report).await?;
    }
    if wants(Part::Hold) {
        eprintln!(
            "herd bench: {} held sessions, idle and with a small batch a second, beside raw quinn",
            sizes.hold_sessions
        );
        let cost = hold::hold(&options.programs, &bed, sizes).await?;
        report.hold(&cost);
    }
    if wants(Part::Meter) {
        eprintln!("herd bench: meter cost at 1,000 flows/s");
        let collector = e2e::start_collector(&options.programs, &bed, "for-meters", "").await?;
        for (source, key) in [
            (Source::Synthetic, "meter_synthetic"),
            (Source::Sockets, "meter_sockets"),
        ] {
            let cost = meter_cost(&options.programs, &bed, &collector, source, sizes.meter_seconds).await?;
            report.meter(key, &cost);
        }
        let stored = collector.data_dir.clone();
        collector.terminate().await?;
        // The sockets source's records as they were batched, in each form.
        let wire = wire::of_stored(&stored, meter_cost::SOCKETS_METER)?;
        report.sockets_wire(&wire);
    }
    if wants(Part::Pieces) {
        eprintln!("herd bench: codec and file sink");
        let budget = sizes.codec_budget;
        let codec = tokio::task::spawn_blocking(move || pieces::codec(budget)).await??;
        report.codec(&codec);
        let dir = bed.path().join("file-sink");
        let sink = pieces::file_sink(&dir, &FileSinkConfig::default(), sizes.records, 256).await?;
        report.add(Section::transfer("file_sink", &[sink]));
    }
    report.conclude();
    report.write(&options.out)?;
    Ok(report)
}

/// The throughput parts' workload in both forms.
struct Works {
    rows: bulk::Workload,
    columns: bulk::Workload,
}

impl Works {
    fn both(&self) -> [&bulk::Workload; 2] {
        [&self.rows, &self.columns]
    }
}

/// Each throughput measurement of ringflow, by form: `[rows, columns]`.
type ByForm = [Vec<e2e::Run>; 2];

/// `runs` as the sections `keys` (`[rows, columns]`).
fn add_by_form(report: &mut BenchReport, keys: [&'static str; 2], runs: &ByForm) {
    for (key, runs) in keys.into_iter().zip(runs) {
        report.add(Section::run(key, runs));
    }
}

/// Interleaved runs: raw quinn bulk of the row form's bytes, pre-encoded batches into a
/// collector (rows, then columns), a meter into it (rows, then columns), and nfcapd taking the
/// same records as NetFlow v5.
async fn file_part(
    options: &BenchOptions,
    bed: &TestBed,
    work: &Works,
    report: &mut BenchReport,
) -> anyhow::Result<()> {
    let client = bench_client(bed)?;
    let raw_server = raw_quinn_server(bed)?;
    let limits = throughput_limits(&options.sizes);
    let collector = e2e::start_collector(&options.programs, bed, "file", &limits).await?;
    let watched = [("collector", collector.process.pid())];
    let records = work.rows.records()?;
    let (mut raw, mut nfcapd) = (Vec::new(), Vec::new());
    let (mut ingest, mut ends): (ByForm, ByForm) = Default::default();
    for run in 0..options.sizes.repeat {
        // Client and server both in this process: "bench" is the whole of raw quinn's CPU.
        raw.push(with_cpu(&[], raw_quinn_bulk(&client, raw_server.local_addr()?, &work.rows)).await?);
        for (form, work) in work.both().into_iter().enumerate() {
            let meter_id = format!("bench-ingest-{run}-{form}");
            let sent = ringflow_ingest(&client, collector.addr, (ORG, &bed.token), &meter_id, work);
            ingest[form].push(with_cpu(&watched, sent).await?);
            let name = format!("bench-file-{run}-{form}");
            ends[form]
                .push(meter_to_collector(&options.programs, bed, (&collector, &[]), &name, work).await?);
        }
        let dir = bed.path().join(format!("nfcapd-{run}"));
        nfcapd
            .push(nfcapd::nfcapd_run(&records, &dir, NFCAPD_RECORDS_PER_SEC, &options.programs.logs).await?);
    }
    collector.terminate().await?;
    raw_server.close(0u32.into(), b"");
    report.add(Section::run("raw_quinn_bulk", &raw));
    add_by_form(report, ["file_ingest", "file_ingest_columns"], &ingest);
    add_by_form(report, ["file_e2e", "file_e2e_columns"], &ends);
    report.nfcapd(&nfcapd);
    Ok(())
}

/// The pace nfcapd is sent NetFlow v5 at: under what it takes without loss on this machine (it
/// has no flow control, so a faster sender measures the socket's drops, not nfcapd).
const NFCAPD_RECORDS_PER_SEC: f64 = 1_000_000.0;

/// Interleaved runs: direct publishes to JetStream (the row form), pre-encoded batches into a
/// collector with the NATS sink and a meter into it (rows, then columns); nats-server's CPU is
/// read in each.
async fn jetstream_part(
    options: &BenchOptions,
    bed: &TestBed,
    work: &Works,
    report: &mut BenchReport,
) -> anyhow::Result<()> {
    let client = bench_client(bed)?;
    let store = bed.path().join("nats-store");
    let nats = NatsServer::start_logged(&store, &options.programs.logs.join("nats.log")).await?;
    let through = nats_sink_config(&nats.url(), "BENCH");
    let direct = nats_sink_config(&nats.url(), "DIRECT");
    let sink = nats_sink_toml(&through) + &throughput_limits(&options.sizes);
    let collector = e2e::start_collector(&options.programs, bed, "jetstream", &sink).await?;
    let nats_pid = nats
        .pid()
        .ok_or_else(|| anyhow::anyhow!("nats-server is not running"))?;
    let watched = [("collector", collector.process.pid()), ("nats", nats_pid)];
    let js = jetstream_context(&direct).await?;
    let mut publishes = Vec::new();
    let (mut ingest, mut ends): (ByForm, ByForm) = Default::default();
    for run in 0..options.sizes.repeat {
        let messages = jetstream_messages(&work.rows, &format!("bench-direct-{run}"))?;
        publishes.push(with_cpu(&watched[1..], jetstream_direct(&js, &direct, messages)).await?);
        for (form, work) in work.both().into_iter().enumerate() {
            let meter_id = format!("bench-js-ingest-{run}-{form}");
            let sent = ringflow_ingest(&client, collector.addr, (ORG, &bed.token), &meter_id, work);
            ingest[form].push(with_cpu(&watched, sent).await?);
            let name = format!("bench-js-{run}-{form}");
            let through_collector = (&collector, &watched[1..]);
            ends[form]
                .push(meter_to_collector(&options.programs, bed, through_collector, &name, work).await?);
        }
    }
    collector.terminate().await?;
    drop(nats);
    report.add(Section::run("jetstream_direct", &publishes));
    add_by_form(report, ["jetstream_ingest", "jetstream_ingest_columns"], &ingest);
    add_by_form(report, ["jetstream_e2e", "jetstream_e2e_columns"], &ends);
    Ok(())
}

/// The `[limits]` table of the throughput collectors.
fn throughput_limits(sizes: &Sizes) -> String {
    sizes.max_unacked.map_or(String::new(), |n| {
        format!("[limits]\nmax_unacked_batches = {n}\n")
    })
}

/// A client endpoint trusting the bed's CA, as a meter's.
fn bench_client(bed: &TestBed) -> anyhow::Result<quinn::Endpoint> {
    let config = ringflow_meter::transport::client_config(&bed.certs.ca)?;
    Ok(ringflow_meter::transport::client_endpoint(config)?)
}

/// Session rates against raw handshakes (collector in this process, as the raw server is), and
/// idle sessions held against a collector process of its own (its memory alone).
async fn sessions_part(
    options: &BenchOptions,
    bed: &TestBed,
    report: &mut BenchReport,
) -> anyhow::Result<()> {
    let sizes = &options.sizes;
    if options.parts.contains(&Part::Sessions) {
        let client = bench_client(bed)?;
        let raw_server = raw_quinn_server(bed)?;
        let extra = format!("{}[runtime]\ndata_threads = 1\n", sessions::wide_open(1_000_000));
        let collector = bed.start_collector("sessions", &extra).await?;
        let mut rates = Vec::new();
        for _ in 0..sizes.repeat {
            rates.push(
                sessions::session_rates(
                    &client,
                    raw_server.local_addr()?,
                    collector.addr,
                    &bed.token,
                    (sizes.sessions, sizes.session_concurrency),
                )
                .await?,
            );
        }
        collector.stop().await;
        raw_server.close(0u32.into(), b"");
        report.sessions(&rates, sizes.sessions, sizes.session_concurrency);
    }
    if options.parts.contains(&Part::Idle) {
        let n = sizes.idle_sessions;
        let collector =
            e2e::start_collector(&options.programs, bed, "idle", &sessions::wide_open(n + 1_000)).await?;
        let cost = sessions::idle_sessions(bed, &collector, n).await?;
        collector.terminate().await?;
        report.idle(&cost);
    }
    Ok(())
}

/// Median of `values` (upper median for an even count).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

impl Transfer {
    /// Median records per second of `runs`.
    pub fn median_rate(runs: &[Transfer]) -> f64 {
        median(runs.iter().map(Transfer::records_per_sec))
    }
}
