fn main() -> std::process::ExitCode {
    metering_daemon::cli::main()
}
