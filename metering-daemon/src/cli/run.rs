//! `eip-meter run` (signals at the edge, the daemon in between) and `eip-meter validate`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info};

use super::load_config;
use crate::config::{AnyInterface, Config, CurrentNetns};

pub(super) fn run(config: &Path) -> anyhow::Result<ExitCode> {
    // An uplink that does not exist yet is attached when it appears (`validate` still reports
    // it); every other problem stops the start.
    let initial = load_config(config, &AnyInterface)?;
    // The daemon's loop runs on this thread; the admin API's and /metrics' connections on two
    // workers, so a sync being received or a scrape never waits for a round, nor a round for them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_with_signals(config.to_owned(), initial))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn validate(config: &Path) -> ExitCode {
    match load_config(config, &CurrentNetns) {
        Ok(c) => {
            println!(
                "{}: OK ({} EIPs, {} shared bandwidths, interfaces {}, capacity {}, pins in {}, metrics {})",
                config.display(),
                c.eips.len(),
                c.groups.len(),
                c.dataplane.interfaces.join(", "),
                c.dataplane.capacity,
                c.dataplane.pin_dir().display(),
                if c.metrics.enabled {
                    format!("on http://{}/metrics", c.metrics.listen)
                } else {
                    "off".to_owned()
                }
            );
            if let Err(e) = print_sources(&c) {
                eprintln!("warning: the local store's inventory not read: {e:#}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the inventory comes from: the file's EIPs and groups, those the admin API created
/// (kept in the local store), and those the file lists that the API created (the file takes
/// them over at the next reload or start).
fn print_sources(c: &Config) -> anyhow::Result<()> {
    let path = c.sampler.store_path();
    if !path.exists() {
        println!(
            "sources: {} EIPs and {} groups from the file; no local store yet, so none from the admin API",
            c.eips.len(),
            c.groups.len()
        );
        return Ok(());
    }
    let rows = crate::store::Store::open_reader(&path)?.load_inventory()?;
    let api = |kind: &str| {
        rows.iter()
            .filter(|r| r.kind == kind && r.source == "api")
            .map(|r| r.subject.clone())
            .collect::<std::collections::HashSet<String>>()
    };
    let (api_eips, api_groups) = (api("eip"), api("group"));
    let taken: Vec<String> = c
        .eips
        .iter()
        .map(|e| e.address.to_string())
        .filter(|a| api_eips.contains(a))
        .chain(
            c.groups
                .iter()
                .map(|g| g.name.clone())
                .filter(|n| api_groups.contains(n)),
        )
        .collect();
    println!(
        "sources: {} EIPs and {} groups from the file; {} EIPs and {} groups from the admin API (kept in {})",
        c.eips.len(),
        c.groups.len(),
        api_eips.len() - taken.iter().filter(|t| api_eips.contains(*t)).count(),
        api_groups.len() - taken.iter().filter(|t| api_groups.contains(*t)).count(),
        path.display()
    );
    for t in taken.iter().take(20) {
        println!(
            "  {t}: created through the admin API, now listed in the file: the file takes it over"
        );
    }
    if taken.len() > 20 {
        println!("  ... and {} more taken over by the file", taken.len() - 20);
    }
    Ok(())
}

async fn run_with_signals(path: PathBuf, initial: Config) -> anyhow::Result<()> {
    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let (reload_tx, reload_rx) = mpsc::channel(4);

    // SIGHUP: re-read and validate; an invalid file is reported and changes nothing.
    let reloader = async move {
        while hangup.recv().await.is_some() {
            info!(config = %path.display(), "SIGHUP: reloading");
            // Uplinks are fixed until a restart, and may be missing for a while: not checked.
            let reload = match load_config(&path, &AnyInterface) {
                Ok(c) => crate::daemon::Reload::Apply(Box::new(c)),
                Err(e) => {
                    error!(error = %e, "reload rejected; keeping the running inventory");
                    crate::daemon::Reload::Rejected
                }
            };
            if reload_tx.send(reload).await.is_err() {
                break;
            }
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM"),
            _ = interrupt.recv() => info!("SIGINT"),
        }
    };
    tokio::select! {
        result = crate::run(initial, reload_rx, shutdown) => result.map_err(Into::into),
        () = reloader => unreachable!("the SIGHUP stream never ends"),
    }
}
