//! The `eip-meter` binary, built inside this package so integration tests always run the current
//! code (`CARGO_BIN_EXE_eip-meter-under-test`) without depending on a separate build step.
fn main() -> std::process::ExitCode {
    metering_daemon::cli::main()
}
