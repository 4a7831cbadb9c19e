//! The `collector` command line: parse flags, set up logging and signals, call the library.
//!
//! Exit codes: 0 success, 1 runtime failure, 64 bad configuration (config file, TLS files, flags).
//! Signals: the first SIGTERM or SIGINT starts a graceful drain (see `server`); a second one exits
//! at once (both as `ringflow_ops` defines for every ringflow binary).

mod read;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

pub use read::{read_configured_sink, read_data_dir, record_json};

use crate::config::{Config, EXAMPLE_CONFIG};
use crate::control::auth;
use crate::data::sink::identity::valid_org_id;
use crate::server::Collector;
use crate::tls;

pub use ringflow_ops::EXIT_CONFIG;

// `--version` names the workspace's version and commit (`ringflow_ops::build_info`): this
// crate's version must be the same.
const _: () = assert!(ringflow_ops::build_info::same_version(
    env!("CARGO_PKG_VERSION"),
    ringflow_ops::build_info::VERSION
));

#[derive(Parser, Debug)]
#[command(
    name = "collector",
    version = ringflow_ops::build_info::LONG_VERSION,
    about = "ringflow collector: accepts flow batches from meters over QUIC (ringflow/1) and stores them",
    after_help = "Logging: RUST_LOG (default \"info\"), e.g. RUST_LOG=ringflow_collector=debug.\n\
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
    /// Run the collector until SIGTERM/SIGINT, then drain meters and stop.
    Run {
        /// Configuration file (TOML); `collector example-config` prints one with every key.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Write a development CA (ca.pem) and a server certificate and key (server.pem, server.key)
    /// valid for localhost, 127.0.0.1, ::1 and every --name; with --client, meter client
    /// certificates for mTLS too.
    DevCerts {
        /// Directory to write into (created if missing; existing files are replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Extra DNS name or IP address the server certificate is valid for (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Also write a meter client certificate for this DNS name, client-NAME.pem and
        /// client-NAME.key, signed by the same CA (repeatable). Map it to an org with
        /// `orgs[].client_names`.
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
    },
    /// Print a new random token for an org, and the hash line to add to the collector config.
    Token {
        /// Org id (1-64 characters of a-z 0-9 - _).
        #[arg(long, value_name = "ORG")]
        org: String,
    },
    /// Print stored records as JSON lines (one per record), oldest first: from a data_dir, or
    /// from wherever a collector config's sink puts them (its data_dir or its NATS stream).
    Read {
        /// The collector's data_dir (file sink).
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present = "config",
            conflicts_with = "config"
        )]
        data_dir: Option<PathBuf>,
        /// A collector config file: read its sink (`sink.kind = "nats"`: its JetStream stream,
        /// with an ordered consumer that changes nothing in the stream).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Only this org (default: every org).
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
        /// Keep waiting for new records, like `tail -f`.
        #[arg(long)]
        follow: bool,
    },
    /// Print a commented configuration file with every key and its default.
    ExampleConfig,
}

/// The `collector` command line's definition: for the man pages and shell completions that the
/// packaging tool generates from it (`packaging/`).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

pub fn main() -> ExitCode {
    main_with_args(std::env::args_os())
}

/// The command line with `args` (the first is the program name): for binaries that embed the
/// collector, as `herd` does to start its fleet by running itself.
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    ringflow_ops::init_logging("info", &cli.log_format);
    match cli.command {
        Command::Run { config } => run(config),
        Command::DevCerts { out, names, clients } => {
            if let Some(bad) = clients
                .iter()
                .find(|c| c.starts_with('*') || c.parse::<auth::NamePattern>().is_err())
            {
                eprintln!(
                    "collector dev-certs: --client {bad:?} is not a DNS name (e.g. \"meter-1.acme.example\")"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            dev_certs(&out, &names, &clients)
        }
        Command::Token { org } => {
            if !valid_org_id(&org) {
                eprintln!(
                    "collector token: {org:?} is not a valid org id: use 1-64 characters of a-z, 0-9, '-' and '_'"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            let token = auth::generate_token();
            println!("token: {token}");
            println!("(org_token in the meters' config; shown only once, the collector keeps only its hash)");
            println!();
            println!("[[orgs]]");
            println!("id = \"{org}\"");
            println!("token_hashes = [\"{}\"]", auth::hash_token(&token));
            ExitCode::SUCCESS
        }
        Command::Read {
            data_dir,
            config,
            org,
            follow,
        } => read(data_dir, config, org.as_deref(), follow),
        Command::ExampleConfig => {
            print!("{EXAMPLE_CONFIG}");
            ExitCode::SUCCESS
        }
    }
}

fn read(data_dir: Option<PathBuf>, config: Option<PathBuf>, org: Option<&str>, follow: bool) -> ExitCode {
    let out = &mut std::io::stdout().lock();
    let result = match (data_dir, config) {
        (Some(dir), _) => {
            read_data_dir(&dir, org, follow, &CancellationToken::new(), out).map_err(|e| e.to_string())
        }
        (None, Some(path)) => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(error) => {
                    eprintln!("collector read: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            read_configured_sink(&config, org, follow, out).map_err(|e| e.to_string())
        }
        (None, None) => unreachable!("clap requires --data-dir or --config"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("collector read: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: PathBuf) -> ExitCode {
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(error) => {
            eprintln!("collector: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // This runtime is the control plane's; the collector starts its data plane's itself.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.control_threads())
        .thread_name("collector-control")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("collector: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut collector = match Collector::bind(config).await {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "collector cannot start");
                eprintln!("collector: {error}");
                return if error.is_config() {
                    ExitCode::from(EXIT_CONFIG)
                } else {
                    ExitCode::FAILURE
                };
            }
        };
        collector.notify_systemd(ringflow_ops::sd_notify::Notifier::from_env());
        let shutdown = CancellationToken::new();
        tokio::spawn(ringflow_ops::shutdown_on_signals(shutdown.clone(), "draining"));
        collector.run(shutdown).await;
        ExitCode::SUCCESS
    })
}

fn dev_certs(out: &std::path::Path, names: &[String], clients: &[String]) -> ExitCode {
    match tls::write_dev_certs(out, names, clients) {
        Ok(paths) => {
            println!(
                "CA certificate (give to meters as ca_file): {}",
                paths.ca.display()
            );
            println!(
                "server certificate (tls.cert):              {}",
                paths.server_cert.display()
            );
            println!(
                "server key (tls.key):                       {}",
                paths.server_key.display()
            );
            for (name, cert, key) in &paths.clients {
                println!(
                    "client {name} (meter client_cert, client_key): {}, {}",
                    cert.display(),
                    key.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("collector dev-certs: {error}");
            ExitCode::FAILURE
        }
    }
}
