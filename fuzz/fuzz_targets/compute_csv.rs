#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| metering_daemon::fuzz::compute_csv(data));
