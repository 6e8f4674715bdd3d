//! `eip-meter counters`: what the kernel counts now, read from the pins, after the uplinks'
//! state as the running daemon last checked it.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use super::load_config;
use crate::{
    config::{AnyInterface, Config},
    dataplane::PinnedMaps,
    exposition::counters::{CounterReport, UplinkRow},
};

#[derive(Debug, clap::Args)]
pub(super) struct CountersArgs {
    /// Config of the daemon whose maps to read (its pin directory is used).
    #[arg(long, short, env = "EIP_METER_CONFIG")]
    config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn counters(args: &CountersArgs) -> anyhow::Result<ExitCode> {
    let c = load_config(&args.config, &AnyInterface)?;
    let pin_dir = c.dataplane.pin_dir();
    let maps = PinnedMaps::open(&pin_dir).with_context(|| {
        format!(
            "no data plane pinned in {} (is the daemon running?)",
            pin_dir.display()
        )
    })?;
    let (uplinks, checked_at) = uplink_rows(&c);
    let report = CounterReport::new(
        &maps.read_counters()?,
        &maps.read_enforcement()?,
        maps.read_non_eip()?,
    )
    .with_uplinks(uplinks, checked_at);
    print!(
        "{}",
        if args.json {
            report.to_json() + "\n"
        } else {
            report.to_table()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// The uplinks as the running daemon last checked them, or `unknown` when no daemon is
/// running (its status file is gone, or its process is).
pub(super) fn uplink_rows(config: &Config) -> (Vec<UplinkRow>, Option<i64>) {
    let path = crate::daemon::uplinks_file(&config.sampler.state_dir);
    let file: Option<crate::daemon::UplinkFile> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    match file {
        Some(f) if process_alive(f.pid) => (
            f.uplinks.iter().map(UplinkRow::checked).collect(),
            Some(f.checked_at),
        ),
        _ => (
            config
                .dataplane
                .interfaces
                .iter()
                .map(|i| UplinkRow::unknown(i))
                .collect(),
            None,
        ),
    }
}

fn process_alive(pid: u32) -> bool {
    i32::try_from(pid)
        .is_ok_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}
