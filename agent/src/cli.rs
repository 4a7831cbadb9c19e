//! The `meter` command line: parse flags, set up logging and signals, call the library.
//!
//! Exit codes: 0 success, 1 runtime failure, 64 bad configuration. Signals: the first SIGTERM or
//! SIGINT stops the sources and flushes what is queued within `shutdown.grace_ms`; a second one
//! exits at once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EXAMPLE_CONFIG};

pub use ringflow_proto::ops::EXIT_CONFIG;

#[derive(Parser, Debug)]
#[command(
    name = "meter",
    version,
    about = "ringflow meter: measures this host's network flows and ships them to a collector fleet over QUIC",
    after_help = "Logging: RUST_LOG (default \"info\"), e.g. RUST_LOG=ringflow_agent=debug.\n\
                  Exit codes: 0 ok, 1 runtime failure, 64 bad configuration."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the meter until SIGTERM/SIGINT, then flush what is queued and stop.
    Run {
        /// Configuration file (TOML); `meter example-config` prints one with every key.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file (including the token and CA files it names) and print what
    /// the meter would do.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a commented configuration file with every key and its default.
    ExampleConfig,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    ringflow_proto::ops::init_logging("info");
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
        ringflow_proto::quic::load_ca(&config.ca_file)
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
    println!(
        "meter id: {}",
        config
            .meter_id
            .as_deref()
            .unwrap_or("(generated on first start, kept in state_dir)")
    );
    for t in config.targets() {
        println!("collector: {} (certificate name {})", t.address, t.server_name);
    }
    let s = &config.sources.synthetic;
    if s.enabled {
        println!(
            "source: synthetic, {} records/s over {} flows",
            s.records_per_second, s.flows
        );
    } else {
        println!("sources: none enabled");
    }
    ExitCode::SUCCESS
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
        tokio::spawn(ringflow_proto::ops::shutdown_on_signals(
            shutdown.clone(),
            "flushing",
        ));
        match crate::run(config, shutdown).await {
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
