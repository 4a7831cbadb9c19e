//! The `herd` command line.
//!
//! Exit codes: 0 the verdict is pass, 1 it is fail, 2 the run could not be carried out (bad
//! flags, a collector that would not start, ...).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use super::bench::e2e::Programs;
use super::bench::hold::echo_server;
use super::bench::{BenchOptions, Part, Sizes};
use super::fleet::SinkKind;
use super::live::{RunOptions, run};
use super::meters::MeterShape;
use super::placement::Placement;
use super::scenario::{SOAK_PERIODS, Scenario};
use ringflow_tests::process::CollectorCommand;

/// The subcommand under which `herd` runs a collector of its fleet (it starts itself).
const COLLECTOR_SUBCOMMAND: &str = "collector";
/// The subcommand under which `herd bench` runs a meter in a process of its own.
const METER_SUBCOMMAND: &str = "meter";

#[derive(Parser, Debug)]
#[command(
    name = "herd",
    about = "Thundering-herd harness for ringflow: real collectors and thousands of real meters on loopback",
    after_help = "Exit codes: 0 verdict pass, 1 verdict fail, 2 the run could not be carried out.\n\
                  Logs: DIR/logs (one file per collector, meters.log for the meters; RUST_LOG sets the meters' level, default warn)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scenario live: K collector processes on 127.0.0.2.., an in-process DNS server, NATS
    /// if asked, and N meters in this process; write report.json, report.md and charts to DIR.
    Run(RunArgs),
    /// A long live run with events on a schedule (every twelfth of it, in turn: a NATS outage,
    /// a collector dropped from DNS, one drained and restarted, one killed and started again),
    /// reading once a second what each collector process and the meters' process hold (memory,
    /// descriptors, threads, tasks, sink queue); fails when one grows after warm-up beyond its
    /// allowance (docs/herd.md), or on any common check. Build with --release for 2,000 meters.
    Soak(SoakArgs),
    /// Simulate a scenario in virtual time (deterministic; a million meters in under a minute):
    /// the production selection, backoff and admission code against a model of the network and
    /// of each collector's handshake capacity; same report.json keys ("mode": "sim") and charts.
    Sim(SimArgs),
    /// Measure ringflow beside its ceilings in one run: end to end into the file sink and into
    /// JetStream beside raw quinn bulk transfer and direct JetStream publishes, new sessions per
    /// second beside raw quinn handshakes, memory per idle session, the CPU and memory of held
    /// sessions (idle, and a small batch a second) beside raw quinn connections, the meter's CPU
    /// and memory at 1,000 flows/s, codec and file sink throughput. Prints a table; writes
    /// bench.json and bench.md to DIR. Build with --release.
    Bench(BenchArgs),
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Output directory: bench.json, bench.md, logs.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Parts to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PART,...")]
    only: Vec<Part>,
    /// Small sizes: every part in well under a minute, rough figures (what the test suite runs).
    #[arg(long)]
    quick: bool,
    /// Records per throughput run (default 3,000,000; --quick 100,000).
    #[arg(long, value_name = "N")]
    records: Option<u64>,
    /// Runs of each throughput and session-rate measurement, interleaved with its ceiling
    /// (default 3; --quick 1). Medians are reported.
    #[arg(long, value_name = "N")]
    repeat: Option<usize>,
    /// Idle sessions held for the memory figure (default 10,000; --quick 500).
    #[arg(long, value_name = "N")]
    idle_sessions: Option<usize>,
    /// Sessions the hold part holds, ringflow's and raw quinn's each (default 5,000; --quick 300).
    #[arg(long, value_name = "N")]
    hold_sessions: Option<usize>,
    /// The throughput collectors' `limits.max_unacked_batches`: how many batches one data
    /// stream may have unacked (default: the collector's default, 32).
    #[arg(long, value_name = "N")]
    max_unacked: Option<u32>,
    /// Where the collectors' data, the meters' spools and NATS' store go (default: the system's
    /// temporary directory, a real disk: the file sink's fsyncs are part of what is measured).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

/// What `run` and `sim` share: the scenario, its size, its timing and where the results go.
#[derive(clap::Args, Debug)]
struct ScenarioArgs {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// The meters' `batch.max_age_ms`: with `run --rate`, how many batches per second the fleet
    /// acks (the steady load: about 150 µs of this machine's CPU per batch, both sides).
    /// Default by scenario: crash-one 500 (a meter learns that its collector died when it next
    /// sends a batch, so its cadence bounds the failover measured; at 1 record/s, one batch a
    /// second), the others 5,000.
    #[arg(long, value_name = "MS")]
    batch_age_ms: Option<u64>,
    /// Meters (`run`: real agent library, shared UDP sockets, spools in memory).
    #[arg(long, value_name = "N")]
    meters: usize,
    /// Collectors at the start (add-collector adds one more).
    #[arg(long, value_name = "K")]
    collectors: usize,
    /// Length of the run (`sim`: in virtual time); the herd starts at 20% of it, scenario
    /// events at 40-60%.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    duration: u64,
    /// Picks the meters' ids, so where each lands on the ring (`sim`: and every random draw).
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Output directory: report.json, report.md, timeline.json, charts (`run`: and logs).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Fraction of the meters that start first (the latency baseline); the rest is the herd.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.1)]
    first_wave: f64,
    /// The meters' `reconnect.rebalance_window_ms` (default: a fifth of the run).
    #[arg(long, value_name = "MS")]
    rebalance_window_ms: Option<u64>,
    /// TTL of the fleet's DNS records: meters look the fleet up again when it runs out, so it
    /// bounds how soon they see an added collector (default: a tenth of the run, at most 30).
    #[arg(long, value_name = "SECS")]
    dns_ttl: Option<u64>,
    /// The collectors' `admission.adaptive_lag_ms`: their accept rate adapts to keep the
    /// control plane's lag under this, with `--accept-rate` as the ceiling (default 0: off).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    adaptive_lag_ms: u32,
}

impl ScenarioArgs {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.duration >= 5, "--duration must be at least 5 seconds");
        anyhow::ensure!(
            (0.0..1.0).contains(&self.first_wave),
            "--first-wave must be a fraction in [0, 1)"
        );
        anyhow::ensure!(
            self.adaptive_lag_ms <= 10_000,
            "--adaptive-lag-ms must be at most 10000 (0: off)"
        );
        Ok(())
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.duration)
    }

    fn batch_age(&self) -> Duration {
        self.batch_age_ms
            .map_or(self.scenario.batch_age(), Duration::from_millis)
    }

    fn rebalance_window(&self) -> Duration {
        self.rebalance_window_ms
            .map_or(self.duration() / 5, Duration::from_millis)
    }

    fn dns_ttl(&self) -> Duration {
        Duration::from_secs(self.dns_ttl.unwrap_or((self.duration / 10).clamp(1, 30)))
    }
}

#[derive(clap::Args, Debug)]
struct SimArgs {
    #[command(flatten)]
    common: ScenarioArgs,
    /// The herd's meters start one after the other over this long (0: all at once). A live
    /// run's own start-up spread is in its timeline.json (event "herd started").
    #[arg(long, value_name = "MS", default_value_t = 0)]
    start_spread_ms: u64,
    /// Instead of a start spread and the meters' splay: when each further tenth of the herd's
    /// meters first dialled, ms after the herd's start (ten rising values, comma-separated; a
    /// live run's timeline.json has `meters_dialled` per sample). The herd's meters then dial at
    /// once, at moments spread evenly within each tenth.
    #[arg(
        long,
        value_name = "MS,...",
        value_delimiter = ',',
        conflicts_with = "start_spread_ms"
    )]
    first_dials_ms: Vec<u64>,
    /// Handshakes (QUIC + TLS + Hello) one collector completes per second.
    #[arg(long, value_name = "PER_SEC", default_value_t = 5_000.0)]
    capacity: f64,
    /// Round-trip time between meters and collectors.
    #[arg(long, value_name = "MS", default_value_t = 40.0)]
    rtt_ms: f64,
    /// Each collector's `admission.accept_rate` and `accept_burst` (default: --capacity), and
    /// `max_handshakes` by Little's law (0.256 s per handshake, as the collector's defaults).
    #[arg(long, value_name = "PER_SEC")]
    accept_rate: Option<f64>,
    /// The collectors' `admission.bounded_load_epsilon`.
    #[arg(long, value_name = "EPSILON", default_value_t = 0.05)]
    epsilon: f64,
    /// The collectors' `fleet.load_poll_ms`: how often each learns its peers' load.
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    poll_ms: u64,
    /// Collectors killed at once in crash-one (e.g. 20 of 200: losing 10% of the fleet).
    #[arg(long, value_name = "N", default_value_t = 1)]
    crash: usize,
    /// Collectors listen on 127.0.0.{2,3,..}:PORT; a live run's port (timeline.json `addresses`)
    /// puts every meter on the same collectors as in that run.
    #[arg(long, value_name = "PORT", default_value_t = 4433)]
    port: u16,
    /// Ablation: every random delay takes its full length (backoff, walk steps, moves, hints).
    #[arg(long)]
    no_jitter: bool,
    /// Ablation: meters dial the moment they start (no splay).
    #[arg(long)]
    no_splay: bool,
    /// Ablation: DNS gives every meter the same one collector.
    #[arg(long)]
    single_record_dns: bool,
    /// Ablation: no bounded-load cap on the collectors.
    #[arg(long)]
    no_bounded_load: bool,
    /// Run the scenario with these flags and with each defence taken away in turn; write
    /// compare.json, compare.md, compare_attempts and compare_balance charts, and each
    /// variant's output in DIR/VARIANT/.
    #[arg(long)]
    compare: bool,
}

/// `herd sim --first-dials-ms`: ten rising instants, or none.
fn first_dials(ms: &[u64]) -> anyhow::Result<Vec<Duration>> {
    anyhow::ensure!(
        ms.is_empty() || (ms.len() == 10 && ms.is_sorted()),
        "--first-dials-ms takes ten rising values (when each tenth of the herd had dialled), not {ms:?}"
    );
    Ok(ms.iter().map(|&m| Duration::from_millis(m)).collect())
}

/// `herd run --placement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PlacementMode {
    /// `split` when this process may use 2 CPUs or more, else `shared`.
    Auto,
    Split,
    Shared,
}

#[derive(clap::Args, Debug)]
struct SoakArgs {
    /// Meters (real agent library, in this process).
    #[arg(long, value_name = "N", default_value_t = 2_000)]
    meters: usize,
    /// Collectors (at least 3: the events name the first three).
    #[arg(long, value_name = "K", default_value_t = 3)]
    collectors: usize,
    /// Length of the soak; events every twelfth of it, the last twelfth quiet.
    #[arg(long, value_name = "SECS", default_value_t = 3_600)]
    duration: u64,
    /// Synthetic records per second per meter.
    #[arg(long, value_name = "N", default_value_t = 1)]
    rate: u64,
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Output directory: report.json, report.md, timeline.json, charts, logs.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Where the run's state goes (default /dev/shm when it exists).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl SoakArgs {
    /// The live run a soak is: its own scenario, the NATS sink (a soak takes it away).
    fn into_run(self) -> anyhow::Result<RunArgs> {
        anyhow::ensure!(
            self.collectors >= 3,
            "herd soak needs at least 3 collectors (its events name three)"
        );
        anyhow::ensure!(
            self.duration >= 120,
            "herd soak needs at least 120 s (twelve periods of 10 s)"
        );
        Ok(RunArgs {
            common: ScenarioArgs {
                scenario: Scenario::Soak,
                batch_age_ms: None,
                meters: self.meters,
                collectors: self.collectors,
                duration: self.duration,
                seed: self.seed,
                out: self.out,
                first_wave: 0.1,
                // Meters moved by an event go home within half a period, so each period starts
                // settled (the default, a fifth of the run, would be over two periods).
                rebalance_window_ms: Some(self.duration * 1000 / u64::from(SOAK_PERIODS) / 2),
                dns_ttl: None,
                adaptive_lag_ms: 0,
            },
            sink: SinkKind::Nats,
            rate: self.rate,
            accept_rate: None,
            placement: PlacementMode::Shared,
            work_dir: self.work_dir,
            quiet: self.quiet,
        })
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    common: ScenarioArgs,
    /// Where collectors store batches: their files, NATS JetStream, or Kafka (librdkafka's mock
    /// cluster of three brokers, in this process). sink-outage always uses nats.
    #[arg(long, value_enum, default_value = "file")]
    sink: SinkKind,
    /// Synthetic records per second per meter.
    #[arg(long, value_name = "N", default_value_t = 1)]
    rate: u64,
    /// Each collector's `admission.accept_rate` (and `accept_burst`); default: the collector's
    /// default (1,000/s, measured for a 2-core machine of its own) divided by the collectors
    /// sharing this machine.
    #[arg(long, value_name = "PER_SEC")]
    accept_rate: Option<u32>,
    /// Which CPUs each side gets: `split` puts the collectors on the upper half of this
    /// process's CPUs (at least one) and the meters on the rest; `shared` lets both use all;
    /// `auto` is `split` when this process may use 2 CPUs or more, else `shared`.
    #[arg(long, value_enum, default_value = "auto")]
    placement: PlacementMode,
    /// Where the run's state goes (meters' state, collectors' data); default /dev/shm when it
    /// exists (thousands of small files), else the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// `herd`'s entry point.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == COLLECTOR_SUBCOMMAND) {
        return ringflow_collector::cli::main_with_args(args.into_iter().skip(1));
    }
    if args.get(1).is_some_and(|a| a == METER_SUBCOMMAND) {
        return ringflow_meter::cli::main_with_args(args.into_iter().skip(1));
    }
    if args.get(1).is_some_and(|a| a == echo_server::SUBCOMMAND) {
        return echo_server::main_with_args(args.into_iter().skip(1));
    }
    let command = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let cli = Cli::parse_from(args);
    let a = match cli.command {
        Command::Run(a) => a,
        Command::Soak(s) => match s.into_run() {
            Ok(a) => a,
            Err(error) => {
                eprintln!("herd: {error:#}");
                return ExitCode::from(2);
            }
        },
        Command::Sim(a) => return sim(a),
        Command::Bench(a) => return bench(a, command),
    };
    let options = match options(a) {
        Ok(o) => o,
        Err(error) => {
            eprintln!("herd: {error:#}");
            return ExitCode::from(2);
        }
    };
    let limit = raise_file_limit(options.meters);
    if limit < FILES_NEEDED {
        eprintln!(
            "herd: warning: the open-file limit is {limit}, under the {FILES_NEEDED} a herd may hold at once \
             (lookup sockets, endpoints, logs); raise it with `ulimit -n`"
        );
    }
    let out = options.out.clone();
    live_run(&out.clone(), async move {
        let report = run(options).await?;
        let summary = format!(
            "{}\nreport: {}\n",
            report.markdown(),
            out.join("report.json").display()
        );
        Ok((report.passed(), summary))
    })
}

/// Runs `job` (a live run writing to `out`) on a runtime of its own, its meters' logs in
/// `out/logs`, and concludes with its verdict and summary.
fn live_run(out: &std::path::Path, job: impl Future<Output = anyhow::Result<(bool, String)>>) -> ExitCode {
    if let Err(error) = log_to(out) {
        eprintln!("herd: cannot write logs under {}: {error:#}", out.display());
        return ExitCode::from(2);
    }
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => conclude(runtime.block_on(job)),
        Err(error) => {
            eprintln!("herd: cannot start the async runtime: {error}");
            ExitCode::from(2)
        }
    }
}

/// Prints a finished run's summary and exits 0 (its verdict is pass), 1 (fail), or 2 (it could
/// not be carried out).
fn conclude(result: anyhow::Result<(bool, String)>) -> ExitCode {
    match result {
        Ok((passed, summary)) => {
            print!("{summary}");
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("herd: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn bench(a: BenchArgs, command: String) -> ExitCode {
    let options = match bench_options(a, command) {
        Ok(o) => o,
        Err(error) => {
            eprintln!("herd: {error:#}");
            return ExitCode::from(2);
        }
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "herd bench: warning: a debug build; run `cargo run --release -p ringflow-herd --bin herd -- bench ...`"
        );
    }
    raise_file_limit(options.sizes.idle_sessions);
    let out = options.out.clone();
    // Targets are reported, not enforced: a missed one is in the table, and the exit code is 0.
    live_run(&out.clone(), async move {
        let report = super::bench::run(options).await?;
        let summary = format!(
            "{}\nreport: {}\n",
            report.markdown(),
            out.join("bench.json").display()
        );
        Ok((true, summary))
    })
}

fn bench_options(a: BenchArgs, command: String) -> anyhow::Result<BenchOptions> {
    let mut sizes = if a.quick { Sizes::quick() } else { Sizes::full() };
    if let Some(n) = a.records {
        anyhow::ensure!(n >= 1_000, "--records must be at least 1000 (one batch)");
        sizes.records = n;
    }
    if let Some(n) = a.repeat {
        anyhow::ensure!(n >= 1, "--repeat must be at least 1");
        sizes.repeat = n;
    }
    if let Some(n) = a.max_unacked {
        anyhow::ensure!(
            (1..=65_536).contains(&n),
            "--max-unacked must be between 1 and 65536"
        );
        sizes.max_unacked = Some(n);
    }
    if let Some(n) = a.idle_sessions {
        anyhow::ensure!(
            (1..=100_000).contains(&n),
            "--idle-sessions must be between 1 and 100000"
        );
        sizes.idle_sessions = n;
    }
    if let Some(n) = a.hold_sessions {
        anyhow::ensure!(
            (1..=50_000).contains(&n),
            "--hold-sessions must be between 1 and 50000"
        );
        sizes.hold_sessions = n;
    }
    let herd = std::env::current_exe()?;
    let parts = if a.only.is_empty() {
        <Part as clap::ValueEnum>::value_variants().to_vec()
    } else {
        a.only
    };
    let logs = a.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let real_meter = herd.with_file_name("meter");
    let (meter, meter_leading_args) = if real_meter.is_file() {
        (real_meter, Vec::new())
    } else {
        eprintln!(
            "herd bench: no meter binary beside herd, so meters run as `herd meter` (the same code in a larger binary: its memory figures are higher); build it with `cargo build --release -p ringflow-meter`"
        );
        (herd.clone(), vec![METER_SUBCOMMAND.into()])
    };
    Ok(BenchOptions {
        parts,
        sizes,
        quick: a.quick,
        programs: Programs {
            collector: CollectorCommand {
                binary: herd.clone(),
                leading_args: vec![COLLECTOR_SUBCOMMAND.into()],
                log_dir: Some(logs.clone()),
            },
            meter,
            meter_leading_args,
            herd,
            logs,
        },
        work_parent: a.work_dir.unwrap_or_else(std::env::temp_dir),
        out: a.out,
        command,
    })
}

fn sim(a: SimArgs) -> ExitCode {
    let options = match sim_options(&a) {
        Ok(o) => o,
        Err(error) => {
            eprintln!("herd: {error:#}");
            return ExitCode::from(2);
        }
    };
    let started = tokio::time::Instant::now();
    let out = &a.common.out;
    let wall = |file: &str| {
        format!(
            "\nwall time {:.1} s; {}\n",
            started.elapsed().as_secs_f64(),
            out.join(file).display()
        )
    };
    if a.compare {
        // The verdict is the first variant's (the flags as given).
        return conclude(super::sim::compare(&options, out).map(|variants| {
            let md = std::fs::read_to_string(out.join("compare.md")).unwrap_or_default();
            let passed = variants.first().is_some_and(|v| v.verdict == "pass");
            (passed, md + &wall("compare.json"))
        }));
    }
    conclude(
        super::sim::run(&options, out)
            .map(|report| (report.passed(), report.markdown() + &wall("report.json"))),
    )
}

fn sim_options(a: &SimArgs) -> anyhow::Result<super::sim::SimOptions> {
    a.common.check()?;
    anyhow::ensure!(
        a.capacity.is_finite() && a.capacity > 0.0,
        "--capacity must be a positive number of handshakes per second"
    );
    anyhow::ensure!(
        a.rtt_ms.is_finite() && (0.0..=10_000.0).contains(&a.rtt_ms),
        "--rtt-ms must be between 0 and 10000"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.epsilon),
        "--epsilon must be between 0 (no cap) and 1"
    );
    anyhow::ensure!(a.poll_ms >= 10, "--poll-ms must be at least 10");
    anyhow::ensure!(
        a.accept_rate.is_none_or(|r| r.is_finite() && r >= 1.0),
        "--accept-rate must be at least 1 per second"
    );
    let c = &a.common;
    Ok(super::sim::SimOptions {
        scenario: c.scenario,
        meters: c.meters,
        collectors: c.collectors,
        duration: c.duration(),
        seed: c.seed,
        first_wave: c.first_wave,
        start_spread: Duration::from_millis(a.start_spread_ms),
        first_dials: first_dials(&a.first_dials_ms)?,
        port: a.port,
        crash: a.crash,
        capacity: a.capacity,
        rtt: Duration::from_secs_f64(a.rtt_ms / 1_000.0),
        accept_rate: a.accept_rate,
        adaptive_lag_ms: c.adaptive_lag_ms,
        epsilon: a.epsilon,
        poll_interval: Duration::from_millis(a.poll_ms),
        rebalance_window: c.rebalance_window(),
        batch_age: c.batch_age(),
        dns_ttl: c.dns_ttl(),
        ablations: super::sim::Ablations {
            no_jitter: a.no_jitter,
            no_splay: a.no_splay,
            single_record_dns: a.single_record_dns,
            no_bounded_load: a.no_bounded_load,
        },
    })
}

fn options(a: RunArgs) -> anyhow::Result<RunOptions> {
    a.common.check()?;
    anyhow::ensure!(a.rate >= 1, "--rate must be at least 1 record per second");
    let binary = std::env::current_exe()?;
    let work_parent = a.work_dir.unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() { shm } else { std::env::temp_dir() }
    });
    let cpus = crate::placement::allowed_cpus()?;
    let placement = match a.placement {
        PlacementMode::Split => Placement::split(&cpus)?,
        PlacementMode::Auto if cpus.len() >= 2 => Placement::split(&cpus)?,
        PlacementMode::Auto | PlacementMode::Shared => Placement::shared(&cpus),
    };
    let c = a.common;
    Ok(RunOptions {
        scenario: c.scenario,
        meters: c.meters,
        collectors: c.collectors,
        duration: c.duration(),
        sink: a.sink,
        seed: c.seed,
        first_wave: c.first_wave,
        shape: MeterShape {
            records_per_second: a.rate,
            batch_age: c.batch_age(),
            rebalance_window: c.rebalance_window(),
            grace: Duration::from_secs(5),
        },
        dns_ttl: c.dns_ttl(),
        accept_rate: a.accept_rate.unwrap_or(1_000 / c.collectors.max(1) as u32).max(1),
        adaptive_lag_ms: c.adaptive_lag_ms,
        collector: placement.collector_command(CollectorCommand {
            binary,
            leading_args: vec![COLLECTOR_SUBCOMMAND.into()],
            log_dir: None,
        }),
        placement,
        work_parent,
        progress: !a.quiet,
        out: c.out,
    })
}

/// Open files a herd may hold at once: the meters' DNS lookups in flight (two sockets each, see
/// `meters::LOOKUPS_IN_FLIGHT`), their shared endpoints, logs and the probe.
const FILES_NEEDED: u64 = 8_192;

/// Raises this process's open-file limit towards what `meters` meters could use at most (one
/// lookup socket or two each, when DNS is slow) and returns it; the hard limit is raised too
/// where the process may (CAP_SYS_RESOURCE).
fn raise_file_limit(meters: usize) -> u64 {
    use rlimit::Resource;
    let want = (2 * meters as u64 + 4096).min(1 << 20);
    if let Ok((_, hard)) = Resource::NOFILE.get()
        && hard < want
    {
        let _ = Resource::NOFILE.set(want, want);
    }
    rlimit::increase_nofile_limit(want).unwrap_or(0)
}

/// The meters' logs go to `OUT/logs/meters.log` (thousands of meters would drown a terminal).
fn log_to(out: &std::path::Path) -> anyhow::Result<()> {
    let dir = out.join("logs");
    std::fs::create_dir_all(&dir)?;
    let file = std::fs::File::create(dir.join("meters.log"))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}
