#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| metering_daemon::fuzz::config(data));
