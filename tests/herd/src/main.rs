//! `herd run --scenario NAME --meters N --collectors K --out DIR`: the thundering-herd harness
//! (see docs/herd.md).

fn main() -> std::process::ExitCode {
    ringflow_herd::cli::main()
}
