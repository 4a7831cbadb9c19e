//! `cargo run -p ringflow-tests --bin demo`: a local collector and meter, flows visibly arriving.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "demo",
    about = "Run a local ringflow collector and meter with embedded defaults and watch flows arrive"
)]
struct Args {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Synthetic records per second beside the host's own flows (0: none).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Working directory; wiped at start. Holds certificates, configs and the collector's data.
    #[arg(long, value_name = "DIR", default_value = "target/ringflow-demo")]
    dir: PathBuf,
    /// Sample records printed every 5 seconds.
    #[arg(long, default_value_t = 3)]
    samples: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("demo: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let options = ringflow_tests::demo::DemoOptions {
        dir: args.dir,
        duration: args.duration.map(Duration::from_secs),
        rate: args.rate,
        samples: args.samples,
    };
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let on_ctrl_c = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_ctrl_c.cancel();
            }
        });
        match ringflow_tests::demo::run(options, stop, &mut std::io::stdout()).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("demo: {error:#}");
                ExitCode::FAILURE
            }
        }
    })
}
