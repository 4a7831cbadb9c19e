//! `herd run --scenario NAME --meters N --collectors K --out DIR`: the thundering-herd harness
//! (see README, "herd").

fn main() -> std::process::ExitCode {
    ringflow_tests::herd::cli::main()
}
