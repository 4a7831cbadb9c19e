//! The `meter` command line: parse flags, set up logging and signals, call the library.
//!
//! Exit codes: 0 success, 1 runtime failure, 64 bad configuration. Signals: the first SIGTERM or
//! SIGINT stops the sources, writes what is in memory to the spool and keeps delivering for up
//! to `shutdown.grace_ms`; a second one exits at once (the spool keeps everything it was given).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EXAMPLE_CONFIG};
use ringflow_ops::sd_notify::Notifier;

pub use ringflow_ops::EXIT_CONFIG;

// `--version` names the workspace's version and commit (`ringflow_ops::build_info`): this
// crate's version must be the same.
const _: () = assert!(ringflow_ops::build_info::same_version(
    env!("CARGO_PKG_VERSION"),
    ringflow_ops::build_info::VERSION
));

#[derive(Parser, Debug)]
#[command(
    name = "meter",
    version = ringflow_ops::build_info::LONG_VERSION,
    about = "ringflow meter: measures this host's network flows and ships them to a collector fleet over QUIC",
    after_help = "Logging: RUST_LOG (default \"info\"), e.g. RUST_LOG=ringflow_meter=debug.\n\
                  Exit codes: 0 ok, 1 runtime failure, 64 bad configuration."
)]
struct Cli {
    /// Log format on stderr: "text", or "json" (one object per line, for log pipelines).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text",
          value_parser = ringflow_ops::LOG_FORMATS)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the meter until SIGTERM/SIGINT, then spool what is in memory, deliver what it can
    /// within the grace period and stop.
    Run {
        /// Configuration file (TOML); `meter example-config` prints one with every key.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file (and the token and CA files it names), resolve the fleet,
    /// and print this meter's ring order and the collector it would connect to, and why.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a commented configuration file with every key and its default.
    ExampleConfig,
}

/// The `meter` command line's definition: for the man pages and shell completions that the
/// packaging tool generates from it (`packaging/`).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

pub fn main() -> ExitCode {
    main_with_args(std::env::args_os())
}

/// The command line with `args` (the first is the program name): for binaries that embed the
/// meter, as `herd bench` does to measure a meter in a process of its own.
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    ringflow_ops::init_logging("info", &cli.log_format);
    match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config } => check(config),
        Command::ExampleConfig => {
            print!("{EXAMPLE_CONFIG}");
            ExitCode::SUCCESS
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        eprintln!("meter: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check(path: PathBuf) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let problems: Vec<String> = [
        config.org_token().err().map(|e| e.to_string()),
        crate::transport::client_config_with_identity(
            &config.ca_file,
            crate::transport::ClientIdentity::of(&config),
        )
        .err()
        .map(|e| e.to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("meter check: {p}");
        }
        return ExitCode::from(EXIT_CONFIG);
    }
    println!("config ok: {}", path.display());
    println!("org: {}", config.org_id);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("meter check: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let sources_ok = runtime.block_on(check_sources(&config.sources));
    match runtime.block_on(check_fleet(&config)) {
        Ok(()) if sources_ok => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("meter check: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Lists the enabled sources and tries what each needs here (the netlink socket table, the
/// counters file, the UDP port). False when an enabled source cannot run.
async fn check_sources(sources: &crate::config::SourcesConfig) -> bool {
    use crate::source::{interfaces, netflow, sockets};
    let mut ok = true;
    let mut report = |name: &str, what: String, result: Result<String, String>| match result {
        Ok(detail) => println!("source {name}: {what}: ok, {detail}"),
        Err(problem) => {
            ok = false;
            println!("source {name}: {what}: CANNOT RUN: {problem}");
        }
    };
    let mut any = false;
    if sources.sockets.enabled {
        any = true;
        let every = sources.sockets.interval_ms;
        match sockets_tier(&sources.sockets).await {
            SocketsTier::Bpf(detail) => report(
                sockets::NAME,
                format!("TCP and UDP sockets every {every} ms"),
                Ok(detail),
            ),
            SocketsTier::SockDiag(result) => {
                report(sockets::NAME, format!("TCP connections every {every} ms"), result)
            }
        }
    }
    if sources.interfaces.enabled {
        any = true;
        let i = &sources.interfaces;
        report(
            interfaces::NAME,
            format!("{} every {} ms", i.path.display(), i.interval_ms),
            interfaces::read(&i.path)
                .await
                .map(|c| format!("{} interfaces", c.len()))
                .map_err(|e| e.to_string()),
        );
    }
    if sources.netflow.enabled {
        any = true;
        report(
            netflow::NAME,
            format!("NetFlow v5/v9 and IPFIX on udp {}", sources.netflow.listen),
            netflow::NetflowListener::bind(&sources.netflow)
                .map(|_| "the port is free".to_owned())
                .map_err(|e| e.to_string()),
        );
    }
    let s = &sources.synthetic;
    if s.enabled {
        any = true;
        report(
            "synthetic",
            format!("{} records/s over {} flows", s.records_per_second, s.flows),
            Ok("generated".to_owned()),
        );
    }
    if !any {
        println!("sources: none enabled");
    }
    ok
}

/// What `meter check` found of the sockets source: the tier that would run, and how it fares.
enum SocketsTier {
    Bpf(String),
    SockDiag(Result<String, String>),
}

async fn sockets_tier(config: &crate::config::SocketsConfig) -> SocketsTier {
    use crate::source::{bpf, sockets};
    let reason = match bpf::choose(config) {
        Ok(bpf::Choice::Bpf(programs)) => {
            return SocketsTier::Bpf(format!(
                "tier bpf: eBPF programs loaded and attached to the cgroup v2 root {}",
                programs.cgroup_root.display()
            ));
        }
        Ok(bpf::Choice::SockDiag(reason)) => reason,
        Err(e) => {
            return SocketsTier::SockDiag(Err(format!(
                "sources.sockets.bpf.mode = \"on\", but the bpf tier cannot run: {e}"
            )));
        }
    };
    SocketsTier::SockDiag(
        sockets::probe(config, sockets::PROBE_WINDOW)
            .await
            .map(|p| format!("tier sock_diag ({}; bpf tier not used: {reason})", p.describe()))
            .map_err(|e| format!("netlink sock_diag: {e}")),
    )
}

/// Resolves the fleet the way the meter would at start and explains its choice.
async fn check_fleet(config: &Config) -> Result<(), String> {
    use crate::fleet::dns::FleetResolver;
    use crate::fleet::{FleetView, LastKnownGood};
    let mut view = FleetView::new(&config.collectors, None);
    for c in &config.collectors {
        println!("static collector: {c}");
    }
    let lkg = LastKnownGood::load(&config.state_dir);
    match FleetResolver::new(&config.fleet).map_err(|e| e.to_string())? {
        Some(resolver) => match resolver.resolve().await {
            Ok(resolved) => {
                println!(
                    "fleet {}: {} collector(s) from DNS, TTL {} s: {}",
                    resolver.name(),
                    resolved.members.len(),
                    resolved.ttl.as_secs(),
                    resolved.members.join(", ")
                );
                view.set_dns(resolved.members);
            }
            Err(error) => match lkg {
                Some(lkg) => {
                    println!(
                        "fleet {}: DNS fails ({error}); the meter would use the last-known-good fleet in {}: {}",
                        resolver.name(),
                        LastKnownGood::path(&config.state_dir).display(),
                        lkg.collectors.join(", ")
                    );
                    view.set_dns(lkg.collectors);
                }
                None => println!(
                    "fleet {}: DNS fails ({error}) and there is no last-known-good fleet",
                    resolver.name()
                ),
            },
        },
        None => {
            if let Some(lkg) = lkg {
                println!(
                    "collectors remembered from earlier sessions: {}",
                    lkg.collectors.join(", ")
                );
                view.set_welcome(lkg.collectors);
            }
        }
    }
    let ring = view.ring();
    if ring.is_empty() {
        return Err("no collector is known: check fleet.name, fleet.nameservers and collectors".into());
    }
    let meter_id = match &config.meter_id {
        Some(id) => Some(id.clone()),
        None => crate::state::read_meter_id(&config.state_dir).map_err(|e| e.to_string())?,
    };
    let Some(meter_id) = meter_id else {
        println!(
            "meter id: none yet (generated at first start and kept in {}); the ring order depends on it",
            config.state_dir.display()
        );
        return Ok(());
    };
    println!("meter id: {meter_id}");
    println!("ring order for this meter (it tries them in this order when one fails):");
    for (i, c) in ring.walk(&meter_id).enumerate() {
        println!("  {}. {c}", i + 1);
    }
    if let Some(first) = ring.first(&meter_id) {
        println!(
            "would connect to {first} (certificate name {}): the first collector at or after this meter's point on the ring",
            config.server_name_for(first)
        );
    }
    Ok(())
}

fn run(path: PathBuf) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("meter: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(ringflow_ops::shutdown_on_signals(
            shutdown.clone(),
            "stopping the sources; spooling what is in memory, delivering until shutdown.grace_ms",
        ));
        match run_notifying(config, shutdown, Notifier::from_env()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "meter cannot start");
                eprintln!("meter: {error}");
                if error.is_config() {
                    ExitCode::from(EXIT_CONFIG)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
    })
}

/// Runs the meter, telling systemd through `notifier`: `READY=1` once it runs (config loaded,
/// state and spool open, sources started), `STOPPING=1` when shutdown starts (or the meter ends
/// by itself), `WATCHDOG=1` every half `WATCHDOG_USEC` from a task on this runtime.
async fn run_notifying(
    config: Config,
    shutdown: CancellationToken,
    notifier: Notifier,
) -> Result<(), crate::MeterError> {
    let mut meter = crate::Meter::start(config, shutdown.clone()).await?;
    let watchdog = notifier.spawn_watchdog(|| None);
    if meter.started().await && notifier.ready(Some("running")) {
        tracing::info!("told systemd: ready");
    }
    let stopping = tokio::spawn({
        let notifier = notifier.clone();
        async move {
            shutdown.cancelled().await;
            notifier.stopping(Some("stopping: spooling, delivering until shutdown.grace_ms"));
        }
    });
    let result = meter.join().await;
    notifier.stopping(None);
    stopping.abort();
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    Ok(result?)
}
