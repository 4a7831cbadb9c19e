//! The `collector` command line, built inside the test bed so end-to-end tests can run it as a
//! child process (and kill it). Identical to `collector/src/main.rs`.

fn main() -> std::process::ExitCode {
    ringflow_collector::cli::main()
}
