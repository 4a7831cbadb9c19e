//! The `herd` command line.
//!
//! Exit codes: 0 the verdict is pass, 1 it is fail, 2 the run could not be carried out (bad
//! flags, a collector that would not start, ...).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use super::fleet::SinkKind;
use super::live::{RunOptions, run};
use super::meters::MeterShape;
use super::scenario::Scenario;
use crate::process::CollectorCommand;

/// The subcommand under which `herd` runs a collector of its fleet (it starts itself).
const COLLECTOR_SUBCOMMAND: &str = "collector";

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
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Virtual meters (real agent library, shared UDP sockets, spools in memory).
    #[arg(long, value_name = "N")]
    meters: usize,
    /// Collectors at the start (add-collector adds one more).
    #[arg(long, value_name = "K")]
    collectors: usize,
    /// Length of the run; the herd starts at 20% of it, scenario events at 40-60%.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    duration: u64,
    /// Where collectors store batches (sink-outage always uses nats).
    #[arg(long, value_enum, default_value = "file")]
    sink: SinkKind,
    /// Picks the meters' ids, so where each lands on the ring.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Output directory: report.json, report.md, timeline.json, charts, logs.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Fraction of the meters that start first (the latency baseline); the rest is the herd.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.1)]
    first_wave: f64,
    /// Synthetic records per second per meter.
    #[arg(long, value_name = "N", default_value_t = 1)]
    rate: u64,
    /// The meters' `batch.max_age_ms`: with --rate, how many batches per second the fleet
    /// acks (the steady load: about 150 µs of this machine's CPU per batch, both sides).
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    batch_age_ms: u64,
    /// The meters' `reconnect.rebalance_window_ms` (default: a fifth of the run).
    #[arg(long, value_name = "MS")]
    rebalance_window_ms: Option<u64>,
    /// TTL of the fleet's DNS records: meters look the fleet up again when it runs out, so it
    /// bounds how soon they see an added collector (default: a tenth of the run, at most 30).
    #[arg(long, value_name = "SECS")]
    dns_ttl: Option<u64>,
    /// Each collector's `admission.accept_rate` (and `accept_burst`); default: the collector's
    /// default (1,000/s, measured for a 2-core machine of its own) divided by the collectors
    /// sharing this machine.
    #[arg(long, value_name = "PER_SEC")]
    accept_rate: Option<u32>,
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
    let cli = Cli::parse_from(args);
    let Command::Run(a) = cli.command;
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
    if let Err(error) = log_to(&options.out) {
        eprintln!(
            "herd: cannot write logs under {}: {error:#}",
            options.out.display()
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("herd: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let out = options.out.clone();
    match runtime.block_on(run(options)) {
        Ok(report) => {
            print!("{}", report.markdown());
            println!("\nreport: {}", out.join("report.json").display());
            if report.passed() {
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

fn options(a: RunArgs) -> anyhow::Result<RunOptions> {
    anyhow::ensure!(a.duration >= 5, "--duration must be at least 5 seconds");
    anyhow::ensure!(
        (0.0..1.0).contains(&a.first_wave),
        "--first-wave must be a fraction in [0, 1)"
    );
    anyhow::ensure!(a.rate >= 1, "--rate must be at least 1 record per second");
    let duration = Duration::from_secs(a.duration);
    let binary = std::env::current_exe()?;
    let work_parent = a.work_dir.unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() { shm } else { std::env::temp_dir() }
    });
    Ok(RunOptions {
        scenario: a.scenario,
        meters: a.meters,
        collectors: a.collectors,
        duration,
        sink: a.sink,
        seed: a.seed,
        out: a.out,
        first_wave: a.first_wave,
        shape: MeterShape {
            records_per_second: a.rate,
            batch_age: Duration::from_millis(a.batch_age_ms),
            rebalance_window: a.rebalance_window_ms.map_or(duration / 5, Duration::from_millis),
            grace: Duration::from_secs(5),
        },
        dns_ttl: Duration::from_secs(a.dns_ttl.unwrap_or((a.duration / 10).clamp(1, 30))),
        accept_rate: a.accept_rate.unwrap_or(1_000 / a.collectors.max(1) as u32).max(1),
        collector: CollectorCommand {
            binary,
            leading_args: vec![COLLECTOR_SUBCOMMAND.into()],
            log_dir: None,
        },
        work_parent,
        progress: !a.quiet,
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
