//! The `meter` command line, built inside the test bed so end-to-end tests can run it as a child
//! process. Identical to `agent/src/main.rs`.

fn main() -> std::process::ExitCode {
    ringflow_meter::cli::main()
}
