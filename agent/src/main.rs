//! The `meter` binary: only hands the process to [`ringflow_meter::cli::main`] (flags, logging,
//! signals and exit codes live there). Must never: hold logic of its own.

fn main() -> std::process::ExitCode {
    ringflow_meter::cli::main()
}
