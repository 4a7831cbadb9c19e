//! The bench's output: `bench.json` (every figure, the machine, the settings, the targets) and
//! `bench.md` (the table), both written to the output directory; the table is also printed.
//!
//! Owns: the keys of bench.json ([`SECTIONS`], [`RATIOS`], [`TARGETS`]: docs/benchmarks.md documents
//! each, a test checks), the ratios and the targets. Must never: measure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::bulk::Transfer;
use super::e2e::Run;
use super::hold::{Held, HoldCost};
use super::meter_cost::MeterCost;
use super::nfcapd::NfcapdRun;
use super::pieces::CodecRates;
use super::sessions::IdleCost;
use super::wire::WireBytes;
use super::{BenchOptions, median};

/// Every section bench.json can hold (a section is absent when its part did not run).
pub const SECTIONS: &[&str] = &[
    "raw_quinn_bulk",
    "file_ingest",
    "file_ingest_columns",
    "file_e2e",
    "file_e2e_columns",
    "nfcapd",
    "jetstream_direct",
    "jetstream_ingest",
    "jetstream_ingest_columns",
    "jetstream_e2e",
    "jetstream_e2e_columns",
    "sessions",
    "idle_sessions",
    "hold",
    "hold_raw_quinn",
    "meter_synthetic",
    "meter_sockets",
    "sockets_wire",
    "codec",
    "file_sink",
];

/// Every ratio (ours over the ceiling measured in the same run).
pub const RATIOS: &[&str] = &[
    "file_e2e_vs_raw_quinn",
    "file_ingest_vs_raw_quinn",
    "file_e2e_columns_vs_raw_quinn",
    "file_ingest_columns_vs_raw_quinn",
    "jetstream_ingest_vs_direct",
    "jetstream_e2e_vs_direct",
    "jetstream_ingest_columns_vs_direct",
    "jetstream_e2e_columns_vs_direct",
    "collector_cpu_columns_vs_rows",
    "meter_cpu_columns_vs_rows",
    "collector_vs_nfcapd",
    "sessions_vs_raw_handshakes",
    "idle_cpu_vs_raw_quinn",
    "batch_cpu_vs_raw_echo",
    "idle_memory_vs_raw_quinn",
];

/// Every target: (key, what, goal, at least (else at most)).
pub const TARGETS: &[(&str, &str, f64, bool)] = &[
    (
        "file_e2e_vs_raw_quinn",
        "end to end (file sink) / raw quinn bulk",
        0.70,
        true,
    ),
    (
        "records_per_collector_cpu_sec",
        "records per collector CPU-second (file sink, end to end)",
        1_000_000.0,
        true,
    ),
    (
        "file_e2e_columns_vs_raw_quinn",
        "end to end with columns (file sink) / raw quinn bulk of the row form's bytes",
        0.5,
        true,
    ),
    (
        "jetstream_e2e_columns_vs_direct",
        "end to end with columns (JetStream) / direct JetStream publish of the row form",
        0.5,
        true,
    ),
    (
        "collector_cpu_columns_vs_rows",
        "records per collector CPU-second, columns / rows (file sink, end to end)",
        2.0,
        true,
    ),
    (
        "collector_vs_nfcapd",
        "records per collector CPU-second (columns, file sink, end to end) / nfcapd's (NetFlow v5)",
        1.0,
        true,
    ),
    (
        "meter_cpu_columns_vs_rows",
        "meter CPU per record, columns / rows (file sink, end to end)",
        1.0,
        false,
    ),
    (
        "columns_wire_bytes_per_record",
        "frame bytes per synthetic record, columns with zstd",
        12.0,
        false,
    ),
    (
        "sockets_columns_zstd_bytes_per_record",
        "frame bytes per sockets-source record, columns with zstd",
        12.0,
        false,
    ),
    (
        "jetstream_e2e_vs_direct",
        "end to end (JetStream) / direct JetStream publish",
        0.90,
        true,
    ),
    (
        "sessions_vs_raw_handshakes",
        "new sessions / raw quinn handshakes",
        0.80,
        true,
    ),
    (
        "idle_bytes_per_session",
        "collector memory per idle session (bytes)",
        65_536.0,
        false,
    ),
    (
        "hold_idle_us_per_session_sec",
        "collector CPU per idle session-second (µs)",
        5.0,
        false,
    ),
    (
        "idle_cpu_vs_raw_quinn",
        "collector CPU per idle session-second / raw quinn's",
        2.0,
        false,
    ),
    (
        "hold_us_per_batch",
        "collector CPU per 10-record batch, one a second per session (µs)",
        25.0,
        false,
    ),
    (
        "batch_cpu_vs_raw_echo",
        "collector CPU per 10-record batch / raw quinn's per echo of it",
        3.0,
        false,
    ),
    (
        "hold_bytes_per_idle_session",
        "collector memory per idle session, held with raw quinn's beside (bytes)",
        24_576.0,
        false,
    ),
    (
        "meter_synthetic_cpu_share",
        "meter CPU share of one core, synthetic 1,000 flows/s",
        0.01,
        false,
    ),
    (
        "meter_sockets_cpu_share",
        "meter CPU share of one core, sockets 1,000 flows/s",
        0.01,
        false,
    ),
    (
        "meter_synthetic_rss_mib",
        "meter RSS (MiB), synthetic 1,000 flows/s",
        25.0,
        false,
    ),
    (
        "meter_sockets_rss_mib",
        "meter RSS (MiB), sockets 1,000 flows/s",
        25.0,
        false,
    ),
];

/// One section of bench.json: named figures.
#[derive(Debug, Clone)]
pub struct Section {
    pub key: &'static str,
    pub fields: BTreeMap<&'static str, serde_json::Value>,
}

impl Section {
    fn new(key: &'static str) -> Self {
        Self {
            key,
            fields: BTreeMap::new(),
        }
    }

    fn with(mut self, name: &'static str, value: impl Serialize) -> Self {
        self.fields.insert(
            name,
            serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        );
        self
    }

    fn number(&self, name: &str) -> Option<f64> {
        self.fields.get(name)?.as_f64()
    }

    /// Transfers: median records/s and MB/s, every run's records/s.
    pub fn transfer(key: &'static str, runs: &[Transfer]) -> Self {
        Section::new(key)
            .with("records_per_sec", Transfer::median_rate(runs))
            .with("mb_per_sec", median(runs.iter().map(Transfer::mb_per_sec)))
            .with("records", runs.iter().map(|t| t.records).sum::<u64>())
            .with(
                "runs_records_per_sec",
                runs.iter().map(Transfer::records_per_sec).collect::<Vec<_>>(),
            )
    }

    /// Measured runs: as [`Section::transfer`], plus each process's median CPU seconds per
    /// million records (`NAME_cpu_sec_per_million_records`), and with a collector among them,
    /// `records_per_collector_cpu_sec`.
    pub fn run(key: &'static str, runs: &[Run]) -> Self {
        let transfers: Vec<Transfer> = runs.iter().map(|r| r.transfer).collect();
        let mut section = Section::transfer(key, &transfers);
        let names = runs
            .first()
            .map(|r| r.cpu.iter().map(|c| c.0).collect::<Vec<_>>());
        for name in names.unwrap_or_default() {
            let per_million = median(runs.iter().map(|r| {
                let cpu = r.cpu.iter().find(|c| c.0 == name).map_or(f64::NAN, |c| c.1);
                cpu / r.transfer.records as f64 * 1e6
            }));
            section.fields.insert(
                cpu_field(name),
                serde_json::to_value(per_million).unwrap_or(serde_json::Value::Null),
            );
            if name == "collector" {
                section = section.with(PER_COLLECTOR_CPU_SEC, 1e6 / per_million);
            }
        }
        section
    }
}

/// The field of a run's records per collector CPU-second.
const PER_COLLECTOR_CPU_SEC: &str = "records_per_collector_cpu_sec";

/// The bench.json field of a process's CPU per million records.
fn cpu_field(process: &str) -> &'static str {
    match process {
        "collector" => "collector_cpu_sec_per_million_records",
        "meter" => "meter_cpu_sec_per_million_records",
        "nats" => "nats_cpu_sec_per_million_records",
        _ => "bench_cpu_sec_per_million_records",
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    /// "release" or "debug": a debug build measures the compiler's settings, not ringflow.
    pub build: &'static str,
}

impl Machine {
    fn this() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_owned()))
                .unwrap_or_default(),
            memory_gib: meminfo
                .lines()
                .find_map(|l| {
                    l.strip_prefix("MemTotal:")?
                        .split_whitespace()
                        .next()?
                        .parse::<f64>()
                        .ok()
                })
                .map_or(0.0, |kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub key: &'static str,
    pub what: &'static str,
    pub measured: f64,
    pub goal: f64,
    pub at_least: bool,
    pub met: bool,
}

/// What `herd bench` found.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub command: String,
    pub machine: Machine,
    pub quick: bool,
    pub records_per_run: u64,
    pub runs: usize,
    #[serde(serialize_with = "sections")]
    pub results: Vec<Section>,
    pub ratios: BTreeMap<&'static str, f64>,
    pub targets: Vec<TargetCheck>,
}

fn sections<S: serde::Serializer>(results: &[Section], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(results.len()))?;
    for section in results {
        map.serialize_entry(section.key, &section.fields)?;
    }
    map.end()
}

impl BenchReport {
    pub fn new(options: &BenchOptions) -> Self {
        Self {
            command: options.command.clone(),
            machine: Machine::this(),
            quick: options.quick,
            records_per_run: options.sizes.records,
            runs: options.sizes.repeat,
            results: Vec::new(),
            ratios: BTreeMap::new(),
            targets: Vec::new(),
        }
    }

    pub fn add(&mut self, section: Section) {
        self.results.retain(|s| s.key != section.key);
        self.results.push(section);
    }

    pub fn section(&self, key: &str) -> Option<&Section> {
        self.results.iter().find(|s| s.key == key)
    }

    fn figure(&self, key: &str, name: &str) -> Option<f64> {
        self.section(key)?.number(name)
    }

    pub fn sessions(&mut self, rates: &[(f64, f64)], sessions: usize, concurrency: usize) {
        self.add(
            Section::new("sessions")
                .with("raw_quinn_per_sec", median(rates.iter().map(|r| r.0)))
                .with("ringflow_per_sec", median(rates.iter().map(|r| r.1)))
                .with("sessions_per_run", sessions)
                .with("concurrency", concurrency)
                .with("runs_ratio", rates.iter().map(|r| r.1 / r.0).collect::<Vec<_>>()),
        );
    }

    pub fn idle(&mut self, cost: &IdleCost) {
        self.add(
            Section::new("idle_sessions")
                .with("sessions", cost.sessions)
                .with("rss_before_bytes", cost.rss_before)
                .with("rss_after_bytes", cost.rss_after)
                .with("bytes_per_session", cost.bytes_per_session()),
        );
    }

    /// The hold's two sections: `hold` (the collector) and `hold_raw_quinn`, with the same
    /// fields; `hold` also has the settings the sessions kept alive with.
    pub fn hold(&mut self, cost: &HoldCost) {
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        let ours = held_section("hold", &cost.ours)
            .with("keep_alive_ms", ms(cost.cadence.keep_alive))
            .with("heartbeat_interval_ms", ms(cost.cadence.heartbeat))
            .with("idle_timeout_ms", ms(cost.cadence.idle_timeout))
            .with("records_per_batch", super::hold::ours::RECORDS_PER_SMALL_BATCH)
            .with("batch_bytes", cost.batch_bytes);
        self.add(ours);
        self.add(held_section("hold_raw_quinn", &cost.raw));
    }

    pub fn meter(&mut self, key: &'static str, cost: &MeterCost) {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        self.add(
            Section::new(key)
                .with("flows_per_sec", cost.flows_per_sec)
                .with("cpu_share_of_one_core", cost.cpu_share)
                .with("rss_mib", mib(cost.rss))
                .with("peak_rss_mib", mib(cost.peak_rss)),
        );
    }

    /// nfcapd's runs: records per CPU-second (the median), and what it lost.
    pub fn nfcapd(&mut self, runs: &[NfcapdRun]) {
        let sent: u64 = runs.iter().map(|r| r.sent).sum();
        let stored: u64 = runs.iter().map(|r| r.stored).sum();
        self.add(
            Section::new("nfcapd")
                .with(
                    "records_per_cpu_sec",
                    median(runs.iter().map(NfcapdRun::records_per_cpu_sec)),
                )
                .with(
                    "best_records_per_cpu_sec",
                    runs.iter()
                        .map(NfcapdRun::records_per_cpu_sec)
                        .fold(0.0, f64::max),
                )
                .with(
                    "cpu_sec_per_million_records",
                    median(runs.iter().map(|r| r.cpu_seconds / r.stored.max(1) as f64 * 1e6)),
                )
                .with(
                    "records_per_sec_sent",
                    median(runs.iter().map(|r| r.sent as f64 / r.seconds)),
                )
                .with("records_sent", sent)
                .with("records_stored", stored)
                .with(
                    "runs_records_per_cpu_sec",
                    runs.iter()
                        .map(NfcapdRun::records_per_cpu_sec)
                        .collect::<Vec<_>>(),
                ),
        );
    }

    /// The sockets source's batches framed in each form.
    pub fn sockets_wire(&mut self, wire: &WireBytes) {
        self.add(
            Section::new("sockets_wire")
                .with("records", wire.records)
                .with("batches", wire.batches)
                .with("rows_bytes_per_record", wire.rows)
                .with("columns_bytes_per_record", wire.columns)
                .with("columns_zstd_bytes_per_record", wire.columns_zstd),
        );
    }

    pub fn codec(&mut self, rates: &CodecRates) {
        self.add(
            Section::new("codec")
                .with("encode_records_per_sec", rates.encode_records_per_sec)
                .with("decode_records_per_sec", rates.decode_records_per_sec)
                .with("judge_records_per_sec", rates.judge_records_per_sec)
                .with("wire_bytes_per_record", rates.wire_bytes_per_record)
                .with(
                    "columns_encode_records_per_sec",
                    rates.columns_encode_records_per_sec,
                )
                .with(
                    "columns_judge_records_per_sec",
                    rates.columns_judge_records_per_sec,
                )
                .with(
                    "columns_wire_bytes_per_record",
                    rates.columns_wire_bytes_per_record,
                )
                .with(
                    "columns_plain_wire_bytes_per_record",
                    rates.columns_plain_wire_bytes_per_record,
                ),
        );
    }

    /// Works out the ratios and checks the targets against what was measured.
    pub fn conclude(&mut self) {
        let rate = |r: &Self, key: &str| r.figure(key, "records_per_sec");
        let pairs = [
            (
                "file_e2e_vs_raw_quinn",
                rate(self, "file_e2e"),
                rate(self, "raw_quinn_bulk"),
            ),
            (
                "file_ingest_vs_raw_quinn",
                rate(self, "file_ingest"),
                rate(self, "raw_quinn_bulk"),
            ),
            (
                "file_e2e_columns_vs_raw_quinn",
                rate(self, "file_e2e_columns"),
                rate(self, "raw_quinn_bulk"),
            ),
            (
                "file_ingest_columns_vs_raw_quinn",
                rate(self, "file_ingest_columns"),
                rate(self, "raw_quinn_bulk"),
            ),
            (
                "jetstream_ingest_columns_vs_direct",
                rate(self, "jetstream_ingest_columns"),
                rate(self, "jetstream_direct"),
            ),
            (
                "jetstream_e2e_columns_vs_direct",
                rate(self, "jetstream_e2e_columns"),
                rate(self, "jetstream_direct"),
            ),
            (
                "collector_cpu_columns_vs_rows",
                self.figure("file_e2e_columns", PER_COLLECTOR_CPU_SEC),
                self.figure("file_e2e", PER_COLLECTOR_CPU_SEC),
            ),
            (
                "meter_cpu_columns_vs_rows",
                self.figure("file_e2e_columns", "meter_cpu_sec_per_million_records"),
                self.figure("file_e2e", "meter_cpu_sec_per_million_records"),
            ),
            // Against nfcapd's best run: its kernel time, and so its records per CPU-second,
            // moves by 2x from run to run here, so the ratio is a floor.
            (
                "collector_vs_nfcapd",
                self.figure("file_e2e_columns", PER_COLLECTOR_CPU_SEC),
                self.figure("nfcapd", "best_records_per_cpu_sec"),
            ),
            (
                "jetstream_ingest_vs_direct",
                rate(self, "jetstream_ingest"),
                rate(self, "jetstream_direct"),
            ),
            (
                "jetstream_e2e_vs_direct",
                rate(self, "jetstream_e2e"),
                rate(self, "jetstream_direct"),
            ),
            (
                "sessions_vs_raw_handshakes",
                self.figure("sessions", "ringflow_per_sec"),
                self.figure("sessions", "raw_quinn_per_sec"),
            ),
        ];
        let held = |r: &Self, name: &str| (r.figure("hold", name), r.figure("hold_raw_quinn", name));
        let held_pairs = [
            ("idle_cpu_vs_raw_quinn", held(self, "idle_us_per_session_sec")),
            ("batch_cpu_vs_raw_echo", held(self, "us_per_batch")),
            ("idle_memory_vs_raw_quinn", held(self, "bytes_per_idle_session")),
        ];
        let all = pairs
            .into_iter()
            .chain(held_pairs.into_iter().map(|(key, (ours, raw))| (key, ours, raw)));
        for (key, ours, ceiling) in all {
            if let (Some(ours), Some(ceiling)) = (ours, ceiling)
                && ceiling > 0.0
            {
                self.ratios.insert(key, ours / ceiling);
            }
        }
        self.targets = TARGETS
            .iter()
            .filter_map(|&(key, what, goal, at_least)| {
                let measured = self.target_figure(key)?;
                let met = if at_least {
                    measured >= goal
                } else {
                    measured <= goal
                };
                Some(TargetCheck {
                    key,
                    what,
                    measured,
                    goal,
                    at_least,
                    met,
                })
            })
            .collect();
    }

    fn target_figure(&self, key: &str) -> Option<f64> {
        match key {
            "records_per_collector_cpu_sec" => self.figure("file_e2e", key),
            "columns_wire_bytes_per_record" => self.figure("codec", key),
            "sockets_columns_zstd_bytes_per_record" => {
                self.figure("sockets_wire", "columns_zstd_bytes_per_record")
            }
            "idle_bytes_per_session" => self.figure("idle_sessions", "bytes_per_session"),
            "hold_idle_us_per_session_sec" => self.figure("hold", "idle_us_per_session_sec"),
            "hold_us_per_batch" => self.figure("hold", "us_per_batch"),
            "hold_bytes_per_idle_session" => self.figure("hold", "bytes_per_idle_session"),
            _ => {
                if let Some(ratio) = self.ratios.get(key) {
                    return Some(*ratio);
                }
                let (meter, what) = key.rsplit_once("_cpu_share").map_or_else(
                    || (key.strip_suffix("_rss_mib"), "rss_mib"),
                    |(m, _)| (Some(m), "cpu_share_of_one_core"),
                );
                self.figure(meter?, what)
            }
        }
    }

    /// The verdict is informational: a missed target is reported, not an error.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "# herd bench\n\n`{}`\n\n{} CPUs ({}), {} GiB, Linux {}, {} build; {} records per run, {} run(s), medians.\n",
            self.command,
            m.cpus,
            m.cpu_model,
            m.memory_gib,
            m.kernel,
            m.build,
            self.records_per_run,
            self.runs
        );
        self.comparisons_md(&mut out);
        self.figures_md(&mut out);
        self.targets_md(&mut out);
        out
    }

    /// "N rec/s, M MB/s" of a throughput section.
    fn rate(&self, key: &str) -> Option<String> {
        Some(format!(
            "{} rec/s, {:.0} MB/s",
            thousands(self.figure(key, "records_per_sec")?),
            self.figure(key, "mb_per_sec")?
        ))
    }

    /// The table of ringflow beside its ceiling, measured in the same run.
    fn comparisons_md(&self, out: &mut String) {
        out.push_str("| measurement | ringflow | ceiling, same run | ratio |\n|---|---|---|---|\n");
        let rate = |key: &str| self.rate(key);
        let ratio = |key: &str| self.ratios.get(key).map_or("-".to_owned(), |r| format!("{r:.2}"));
        let rows = [
            (
                "meter → collector → file sink (fsync always), acks on",
                rate("file_e2e"),
                rate("raw_quinn_bulk").map(|r| format!("raw quinn bulk, same bytes: {r}")),
                ratio("file_e2e_vs_raw_quinn"),
            ),
            (
                "pre-encoded batches → collector → file sink, acks on",
                rate("file_ingest"),
                rate("raw_quinn_bulk").map(|r| format!("raw quinn bulk, same bytes: {r}")),
                ratio("file_ingest_vs_raw_quinn"),
            ),
            (
                "meter → collector → file sink, columns with zstd",
                rate("file_e2e_columns"),
                rate("raw_quinn_bulk").map(|r| format!("raw quinn bulk, the row form's bytes: {r}")),
                ratio("file_e2e_columns_vs_raw_quinn"),
            ),
            (
                "pre-encoded batches → collector → file sink, columns with zstd",
                rate("file_ingest_columns"),
                rate("raw_quinn_bulk").map(|r| format!("raw quinn bulk, the row form's bytes: {r}")),
                ratio("file_ingest_columns_vs_raw_quinn"),
            ),
            (
                "records per collector CPU-second, file sink end to end, columns",
                self.figure("file_e2e_columns", PER_COLLECTOR_CPU_SEC)
                    .map(thousands),
                self.figure("file_e2e", PER_COLLECTOR_CPU_SEC)
                    .map(|r| format!("rows: {}", thousands(r))),
                ratio("collector_cpu_columns_vs_rows"),
            ),
            (
                "records per collector CPU-second (columns) beside nfcapd (NetFlow v5, UDP, no acks)",
                self.figure("file_e2e_columns", PER_COLLECTOR_CPU_SEC)
                    .map(thousands),
                self.figure("nfcapd", "best_records_per_cpu_sec")
                    .map(|r| format!("nfcapd, its best run: {}", thousands(r))),
                ratio("collector_vs_nfcapd"),
            ),
            (
                "meter CPU per million records, file sink end to end, columns",
                self.figure("file_e2e_columns", "meter_cpu_sec_per_million_records")
                    .map(|v| format!("{v:.3} s")),
                self.figure("file_e2e", "meter_cpu_sec_per_million_records")
                    .map(|v| format!("rows: {v:.3} s")),
                ratio("meter_cpu_columns_vs_rows"),
            ),
            (
                "pre-encoded batches → collector → JetStream, acks on",
                rate("jetstream_ingest"),
                rate("jetstream_direct").map(|r| format!("direct async publish: {r}")),
                ratio("jetstream_ingest_vs_direct"),
            ),
            (
                "meter → collector → JetStream, acks on",
                rate("jetstream_e2e"),
                rate("jetstream_direct").map(|r| format!("direct async publish: {r}")),
                ratio("jetstream_e2e_vs_direct"),
            ),
            (
                "pre-encoded batches → collector → JetStream, columns with zstd",
                rate("jetstream_ingest_columns"),
                rate("jetstream_direct").map(|r| format!("direct async publish of rows: {r}")),
                ratio("jetstream_ingest_columns_vs_direct"),
            ),
            (
                "meter → collector → JetStream, columns with zstd",
                rate("jetstream_e2e_columns"),
                rate("jetstream_direct").map(|r| format!("direct async publish of rows: {r}")),
                ratio("jetstream_e2e_columns_vs_direct"),
            ),
            (
                "new sessions (QUIC + TLS + Hello/Welcome)",
                self.figure("sessions", "ringflow_per_sec")
                    .map(|r| format!("{}/s", thousands(r))),
                self.figure("sessions", "raw_quinn_per_sec")
                    .map(|r| format!("raw quinn handshakes: {}/s", thousands(r))),
                ratio("sessions_vs_raw_handshakes"),
            ),
        ];
        let held_rows = self.held_rows();
        for (what, ours, ceiling, ratio) in rows.into_iter().chain(held_rows) {
            if let Some(ours) = ours {
                let _ = writeln!(
                    out,
                    "| {what} | {ours} | {} | {ratio} |",
                    ceiling.unwrap_or_default()
                );
            }
        }
    }

    /// The hold's rows of the comparison table: ours, raw quinn's, the ratio.
    fn held_rows(&self) -> [(&'static str, Option<String>, Option<String>, String); 3] {
        let ratio = |key: &str| self.ratios.get(key).map_or("-".to_owned(), |r| format!("{r:.2}"));
        let held = |name: &str, unit: &dyn Fn(f64) -> String| {
            (
                self.figure("hold", name).map(unit),
                self.figure("hold_raw_quinn", name).map(unit),
            )
        };
        let us = |v: f64| format!("{v:.2} µs");
        let kib = |v: f64| format!("{:.1} KiB", v / 1024.0);
        let (idle_ours, idle_raw) = held("idle_us_per_session_sec", &us);
        let (batch_ours, batch_raw) = held("us_per_batch", &us);
        let (mem_ours, mem_raw) = held("bytes_per_idle_session", &kib);
        [
            (
                "idle session: collector CPU per session-second (hold)",
                idle_ours,
                idle_raw.map(|r| format!("raw quinn idle connection: {r}")),
                ratio("idle_cpu_vs_raw_quinn"),
            ),
            (
                "10-record batch a second per session: collector CPU per batch (hold)",
                batch_ours,
                batch_raw.map(|r| format!("raw quinn echo of the same bytes: {r}")),
                ratio("batch_cpu_vs_raw_echo"),
            ),
            (
                "memory per idle session (hold)",
                mem_ours,
                mem_raw.map(|r| format!("raw quinn idle connection: {r}")),
                ratio("idle_memory_vs_raw_quinn"),
            ),
        ]
    }

    /// The table of single figures: CPU per million records, memory, the meter's cost, codec.
    fn figures_md(&self, out: &mut String) {
        out.push_str("\n| figure | value |\n|---|---|\n");
        self.cpu_figures_md(out);
        if let Some(b) = self.figure("idle_sessions", "bytes_per_session") {
            let _ = writeln!(
                out,
                "| collector memory per idle session ({} sessions) | {:.1} KiB |",
                self.figure("idle_sessions", "sessions").unwrap_or(0.0),
                b / 1024.0
            );
        }
        if let (Some(ours), Some(raw)) = (self.section("hold"), self.section("hold_raw_quinn")) {
            let f = |s: &Section, name: &str| s.number(name).unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "| hold: what ran | {:.0} sessions each; keep-alive {:.0} ms, heartbeat {:.0} ms (0: none), idle timeout {:.0} ms; {:.0}-byte batches; windows {:.0} s idle, {:.0} s busy |",
                f(ours, "sessions"),
                f(ours, "keep_alive_ms"),
                f(ours, "heartbeat_interval_ms"),
                f(ours, "idle_timeout_ms"),
                f(ours, "batch_bytes"),
                f(ours, "idle_seconds"),
                f(ours, "busy_seconds"),
            );
            let _ = writeln!(
                out,
                "| hold: CPU with no session held (taken out of the idle figures), and idle in all | collector {:.2}% and {:.2}% of a core, raw quinn {:.2}% and {:.2}% |",
                100.0 * f(ours, "baseline_cpu_share"),
                100.0 * f(ours, "idle_cpu_share"),
                100.0 * f(raw, "baseline_cpu_share"),
                100.0 * f(raw, "idle_cpu_share"),
            );
            let _ = writeln!(
                out,
                "| hold: wakeups (voluntary context switches) per idle session-second | collector {:.3}, raw quinn {:.3} |",
                f(ours, "idle_wakeups_per_session_sec"),
                f(raw, "idle_wakeups_per_session_sec"),
            );
            let _ = writeln!(
                out,
                "| hold: exchanges answered per second in the busy window (missed turns) | collector {:.0} ({:.0}), raw quinn {:.0} ({:.0}) |",
                f(ours, "batches_per_sec"),
                f(ours, "missed_batches"),
                f(raw, "batches_per_sec"),
                f(raw, "missed_batches"),
            );
        }
        self.pieces_figures_md(out);
    }

    /// Each throughput path's CPU per million records, by process.
    fn cpu_figures_md(&self, out: &mut String) {
        for (key, label) in [
            ("file_e2e", "file sink, end to end"),
            ("file_e2e_columns", "file sink, end to end, columns"),
            ("file_ingest", "file sink, pre-encoded"),
            ("file_ingest_columns", "file sink, pre-encoded, columns"),
            ("jetstream_e2e", "JetStream, end to end"),
            ("jetstream_e2e_columns", "JetStream, end to end, columns"),
            ("jetstream_ingest", "JetStream, pre-encoded"),
            ("jetstream_ingest_columns", "JetStream, pre-encoded, columns"),
            (
                "jetstream_direct",
                "JetStream, direct publish (bench = the publisher)",
            ),
            ("raw_quinn_bulk", "raw quinn bulk (bench = client and server)"),
        ] {
            let used: Vec<String> = ["collector", "meter", "nats", "bench"]
                .iter()
                .filter_map(|p| Some(format!("{p} {:.3}", self.figure(key, cpu_field(p))?)))
                .collect();
            if !used.is_empty() {
                let _ = writeln!(
                    out,
                    "| CPU-s per million records, {label} | {} |",
                    used.join(", ")
                );
            }
        }
    }

    /// The meters' cost, the codec, wire bytes, nfcapd and the file sink alone.
    fn pieces_figures_md(&self, out: &mut String) {
        for (key, label) in [("meter_synthetic", "synthetic"), ("meter_sockets", "sockets")] {
            if let Some(s) = self.section(key) {
                let _ = writeln!(
                    out,
                    "| meter, {label} source at {:.0} flows/s | {:.2}% of a core, {:.1} MiB RSS (peak {:.1}) |",
                    s.number("flows_per_sec").unwrap_or(0.0),
                    100.0 * s.number("cpu_share_of_one_core").unwrap_or(0.0),
                    s.number("rss_mib").unwrap_or(0.0),
                    s.number("peak_rss_mib").unwrap_or(0.0),
                );
            }
        }
        if let Some(c) = self.section("codec") {
            for (name, label) in [
                ("encode_records_per_sec", "encode"),
                ("decode_records_per_sec", "decode"),
                ("judge_records_per_sec", "collector judge (decode + checks)"),
                ("columns_encode_records_per_sec", "encode as columns (zstd)"),
                (
                    "columns_judge_records_per_sec",
                    "collector judge of columns (checks, no records built)",
                ),
            ] {
                let _ = writeln!(
                    out,
                    "| codec: {label}, 1,000-record batches | {} rec/s |",
                    thousands(c.number(name).unwrap_or(0.0))
                );
            }
            let _ = writeln!(
                out,
                "| wire bytes per synthetic record: rows / columns / columns with zstd | {:.1} / {:.1} / {:.1} |",
                c.number("wire_bytes_per_record").unwrap_or(0.0),
                c.number("columns_plain_wire_bytes_per_record").unwrap_or(0.0),
                c.number("columns_wire_bytes_per_record").unwrap_or(0.0)
            );
        }
        if let Some(w) = self.section("sockets_wire") {
            let _ = writeln!(
                out,
                "| wire bytes per sockets-source record ({:.0} records): rows / columns / columns with zstd | {:.1} / {:.1} / {:.1} |",
                w.number("records").unwrap_or(0.0),
                w.number("rows_bytes_per_record").unwrap_or(0.0),
                w.number("columns_bytes_per_record").unwrap_or(0.0),
                w.number("columns_zstd_bytes_per_record").unwrap_or(0.0)
            );
        }
        if let Some(n) = self.section("nfcapd") {
            let _ = writeln!(
                out,
                "| nfcapd (NetFlow v5 over loopback UDP, sent at {} rec/s): records per CPU-second (median, best), stored of sent | {}, {}, {} of {} |",
                thousands(n.number("records_per_sec_sent").unwrap_or(0.0)),
                thousands(n.number("records_per_cpu_sec").unwrap_or(0.0)),
                thousands(n.number("best_records_per_cpu_sec").unwrap_or(0.0)),
                thousands(n.number("records_stored").unwrap_or(0.0)),
                thousands(n.number("records_sent").unwrap_or(0.0)),
            );
        }
        if let Some(r) = self.rate("file_sink") {
            let _ = writeln!(
                out,
                "| file sink alone (fsync always, 256 batches in flight) | {r} |"
            );
        }
    }

    /// The targets, met or missed.
    fn targets_md(&self, out: &mut String) {
        if !self.targets.is_empty() {
            out.push_str("\n| target | measured | goal | |\n|---|---|---|---|\n");
            for t in &self.targets {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} {} | {} |",
                    t.what,
                    short(t.measured),
                    if t.at_least { "≥" } else { "≤" },
                    short(t.goal),
                    if t.met { "met" } else { "missed" }
                );
            }
        }
    }

    /// Writes bench.json and bench.md to `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("bench.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("bench.md"), self.markdown())?;
        Ok(())
    }
}

/// One server's figures in the hold.
fn held_section(key: &'static str, held: &Held) -> Section {
    let resolution = if held.precise() { 1e-9 } else { 0.01 };
    Section::new(key)
        .with("sessions", held.sessions)
        .with("baseline_seconds", held.baseline.seconds)
        .with("baseline_cpu_share", held.baseline.cpu / held.baseline.seconds)
        .with("idle_cpu_share", held.idle.cpu / held.idle.seconds)
        .with("idle_seconds", held.idle.seconds)
        .with("busy_seconds", held.busy.seconds)
        .with("idle_us_per_session_sec", held.idle_us_per_session_sec())
        .with(
            "idle_wakeups_per_session_sec",
            held.idle_wakeups_per_session_sec(),
        )
        .with("us_per_batch", held.us_per_exchange())
        .with("batches", held.exchanges)
        .with("batches_per_sec", held.exchanges_per_sec())
        .with("missed_batches", held.missed)
        .with("rss_before_bytes", held.rss_before)
        .with("rss_after_bytes", held.rss_after)
        .with("bytes_per_idle_session", held.bytes_per_idle_session())
        .with("cpu_resolution_sec", resolution)
}

/// 1234567.8 → "1,234,568".
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A figure in a few significant digits.
fn short(v: f64) -> String {
    if v.abs() >= 1_000.0 {
        thousands(v)
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }

    #[test]
    fn every_target_names_a_figure_the_report_can_hold() {
        let mut report = BenchReport {
            command: String::new(),
            machine: Machine::this(),
            quick: true,
            records_per_run: 1,
            runs: 1,
            results: Vec::new(),
            ratios: BTreeMap::new(),
            targets: Vec::new(),
        };
        let transfer = Transfer {
            records: 1_000,
            bytes: 70_000,
            seconds: 1.0,
        };
        let end = Run {
            transfer,
            cpu: vec![("collector", 0.5), ("meter", 0.25)],
        };
        for key in ["raw_quinn_bulk", "jetstream_direct"] {
            report.add(Section::run(
                key,
                &[Run {
                    transfer,
                    cpu: vec![("bench", 0.1)],
                }],
            ));
        }
        for key in ["file_e2e", "file_ingest", "jetstream_ingest", "jetstream_e2e"] {
            report.add(Section::run(key, std::slice::from_ref(&end)));
        }
        // Columns: twice the rate, a quarter of the collector's CPU and half the meter's.
        let columns = Run {
            transfer: Transfer {
                seconds: 0.5,
                ..transfer
            },
            cpu: vec![("collector", 0.125), ("meter", 0.125)],
        };
        for key in [
            "file_e2e_columns",
            "file_ingest_columns",
            "jetstream_ingest_columns",
            "jetstream_e2e_columns",
        ] {
            report.add(Section::run(key, std::slice::from_ref(&columns)));
        }
        report.nfcapd(&[NfcapdRun {
            sent: 1_000,
            stored: 1_000,
            seconds: 1.0,
            cpu_seconds: 0.25,
            datagrams: 34,
        }]);
        report.sockets_wire(&WireBytes {
            records: 100,
            batches: 1,
            rows: 60.0,
            columns: 20.0,
            columns_zstd: 8.0,
        });
        report.codec(&CodecRates {
            encode_records_per_sec: 1.0,
            decode_records_per_sec: 1.0,
            judge_records_per_sec: 1.0,
            wire_bytes_per_record: 56.0,
            columns_encode_records_per_sec: 1.0,
            columns_judge_records_per_sec: 1.0,
            columns_wire_bytes_per_record: 4.7,
            columns_plain_wire_bytes_per_record: 24.0,
        });
        report.sessions(&[(100.0, 90.0)], 10, 1);
        report.idle(&IdleCost {
            sessions: 10,
            rss_before: 0,
            rss_after: 10 << 10,
        });
        let cost = MeterCost {
            flows_per_sec: 1_000.0,
            cpu_share: 0.005,
            rss: 10 << 20,
            peak_rss: 12 << 20,
        };
        report.meter("meter_synthetic", &cost);
        report.meter("meter_sockets", &cost);
        let used = |cpu| ringflow_tests::procstat::ThreadsUse {
            cpu,
            precise: true,
            voluntary_switches: 100,
            seconds: 10.0,
        };
        let held = |idle, busy, rss_after| Held {
            sessions: 10,
            rss_before: 0,
            rss_after,
            baseline: ringflow_tests::procstat::ThreadsUse {
                cpu: 0.0,
                precise: true,
                voluntary_switches: 0,
                seconds: 1.0,
            },
            idle: used(idle),
            busy: used(busy),
            exchanges: 100,
            missed: 0,
        };
        let second = std::time::Duration::from_secs(1);
        report.hold(&HoldCost {
            ours: held(0.0004, 0.0024, 20 << 10),
            raw: held(0.0002, 0.0012, 10 << 10),
            cadence: super::super::hold::cadence::Cadence {
                keep_alive: second,
                idle_timeout: second * 10,
                heartbeat: second * 10,
            },
            batch_bytes: 600,
        });
        report.conclude();
        assert_eq!(report.targets.len(), TARGETS.len(), "{:?}", report.targets);
        assert_eq!(report.ratios.len(), RATIOS.len());
        let by_key = |k: &str| report.targets.iter().find(|t| t.key == k).expect(k);
        assert_eq!(by_key("file_e2e_vs_raw_quinn").measured, 1.0);
        assert_eq!(
            report.figure("file_e2e", "meter_cpu_sec_per_million_records"),
            Some(250.0)
        );
        assert_eq!(
            report.figure("raw_quinn_bulk", "bench_cpu_sec_per_million_records"),
            Some(100.0)
        );
        assert_eq!(by_key("records_per_collector_cpu_sec").measured, 2_000.0);
        assert!(!by_key("records_per_collector_cpu_sec").met);
        assert_eq!(by_key("file_e2e_columns_vs_raw_quinn").measured, 2.0);
        assert_eq!(by_key("jetstream_e2e_columns_vs_direct").measured, 2.0);
        assert_eq!(by_key("collector_cpu_columns_vs_rows").measured, 4.0);
        assert_eq!(by_key("meter_cpu_columns_vs_rows").measured, 0.5);
        assert!(by_key("meter_cpu_columns_vs_rows").met);
        assert_eq!(by_key("collector_vs_nfcapd").measured, 2.0);
        assert_eq!(by_key("sockets_columns_zstd_bytes_per_record").measured, 8.0);
        assert_eq!(by_key("columns_wire_bytes_per_record").measured, 4.7);
        assert_eq!(by_key("sessions_vs_raw_handshakes").measured, 0.9);
        assert_eq!(by_key("idle_bytes_per_session").measured, 1024.0);
        assert!(by_key("meter_sockets_cpu_share").met);
        assert_eq!(by_key("meter_synthetic_rss_mib").measured, 10.0);
        let close = |key: &str, v: f64| (by_key(key).measured - v).abs() < 1e-9;
        assert!(close("hold_idle_us_per_session_sec", 4.0));
        assert!(close("idle_cpu_vs_raw_quinn", 2.0));
        assert!(close("hold_us_per_batch", 20.0) && by_key("hold_us_per_batch").met);
        assert!(close("batch_cpu_vs_raw_echo", 2.0));
        assert!(close("hold_bytes_per_idle_session", 2048.0));
        assert!((report.ratios["idle_memory_vs_raw_quinn"] - 2.0).abs() < 1e-9);
        assert_eq!(report.figure("hold", "idle_wakeups_per_session_sec"), Some(1.0));
        let json = serde_json::to_value(&report).expect("json");
        for key in SECTIONS.iter().filter(|k| **k != "file_sink") {
            assert!(json["results"].get(key).is_some(), "no results.{key}");
        }
    }
}
