//! `package`: builds ringflow's Debian packages (`package debs`), or only the man pages and
//! shell completions (`package assets`). The steps are in the library; this only parses flags.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "package",
    about = "Builds ringflow's Debian packages (ringflow-meter, ringflow-collector)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build both binaries (release), generate their man pages and completions, run `cargo deb`
    /// for both packages, then lintian (it must report no error).
    Debs {
        /// Directory for the .deb files (default: target/debian).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Debian version of both packages (default: the workspace's version, revision 1).
        #[arg(long, value_name = "VERSION")]
        deb_version: Option<String>,
        /// Use the release binaries already built.
        #[arg(long)]
        no_build: bool,
        /// Skip lintian.
        #[arg(long)]
        no_lintian: bool,
    },
    /// Only write the man pages (man/) and shell completions (completions/) into DIR.
    Assets {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("package: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Debs {
            out,
            deb_version,
            no_build,
            no_lintian,
        } => {
            let options = ringflow_packaging::DebOptions {
                out,
                deb_version,
                no_build,
            };
            let debs = ringflow_packaging::build_debs(&options)?;
            if !no_lintian {
                let report = ringflow_packaging::lintian(&debs)?;
                print!("{report}");
                println!("lintian: no errors");
            }
            for deb in debs {
                println!("{}", deb.display());
            }
        }
        Command::Assets { out } => {
            for path in ringflow_packaging::write_assets(&out)? {
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}
