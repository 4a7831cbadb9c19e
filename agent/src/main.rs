fn main() -> std::process::ExitCode {
    ringflow_agent::cli::main()
}
