fn main() -> std::process::ExitCode {
    ringflow_collector::cli::main()
}
