//! `eip-meter-fuzz-packets --seconds N [--seed S]`: random and malformed frames through the
//! real programs with `BPF_PROG_TEST_RUN`, each checked against the kernel's rules
//! (`eip_meter_tests::packet_fuzz`). Needs root. `cargo xtask fuzz` runs it beside the parser
//! fuzzers.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};

fn main() -> Result<()> {
    eip_meter_tests::require_root();
    let mut seconds = 10.0;
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => seconds = value()?.parse().context("--seconds")?,
            "--seed" => seed = Some(value()?.parse().context("--seed")?),
            other => bail!(
                "unknown argument {other}; usage: eip-meter-fuzz-packets --seconds N [--seed S]"
            ),
        }
    }
    // A new seed each run unless given, printed first so a failure can be replayed.
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("packets: seed {seed}, {seconds} s");
    let report = eip_meter_tests::packet_fuzz::run(Duration::from_secs_f64(seconds), seed)?;
    eprintln!(
        "packets: {} frames through ingress and egress, no invariant broken ({} runs metered to EIPs, {} to other addresses, {} counted nowhere, {} dropped by policy, {} refused by the kernel)",
        report.frames,
        report.metered_to_eips,
        report.metered_to_others,
        report.uncounted,
        report.dropped,
        report.refused_by_the_kernel
    );
    Ok(())
}
